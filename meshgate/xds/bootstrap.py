"""The minimal Envoy bootstrap: admin, the cluster of meshgate's ADS and the gateways' local cluster
(its endpoints, one per connected gateway, arrive over ADS like everything else: `_gateways`; native
quotas divide their limits by its size, docs/native.md)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import yaml

from ._gateways import GATEWAYS_CLUSTER
from ._pb import split_host_port

__all__ = [
    "RE2_PROGRAM_SIZE",
    "RECONNECT",
    "RUNTIME",
    "XDS_CLUSTER",
    "Reconnect",
    "XdsTLS",
    "bootstrap_dict",
    "envoy_bootstrap",
]

XDS_CLUSTER = "meshgate_xds"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RE2_PROGRAM_SIZE = 2048
"""The largest RE2 program the gateway's routes may hold (Envoy's default, 100, is too small for them)."""
RUNTIME: dict[str, Any] = {
    "layers": [
        # the native fast routes' user matcher, a counted regex of program size ~800, and their
        # alternations of names (`_fast.REGEX_CHARS`); Envoy's default limit would refuse the routes
        {"name": "meshgate", "static_layer": {"re2.max_program_size.error_level": RE2_PROGRAM_SIZE}},
        {"name": "admin", "admin_layer": {}},  # (as without a layered_runtime: /runtime_modify works)
    ]
}
"""The gateway's runtime layers: a bootstrap of your own needs the same `re2.max_program_size.error_level`."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, kw_only=True)
class XdsTLS:
    """TLS from Envoy to meshgate's ADS: trust `ca_file`; with `cert_file`/`key_file`, mutual TLS.
    (`meshgate serve --tls-cert/--tls-key [--tls-client-ca]` serves the ADS port over TLS / mTLS.)"""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    sni: str | None = None


@dataclass(frozen=True, kw_only=True)
class Reconnect:
    """How soon Envoy re-opens the ADS stream after it broke: a fully jittered exponential backoff, each
    wait drawn from [0, interval), the interval doubling from `base` up to `max` seconds.

    Envoy's own default (no `retry_policy`) is 0.5 s doubling to 30 s: after a restart of meshgate a
    gateway could sit out most of 30 s before it asks again. With `max` = 1 s it asks at least once a
    second while meshgate is away, and so is back within about a second of meshgate listening."""

    base: float = 0.25
    max: float = 1.0

    def __post_init__(self) -> None:
        if not 0.001 <= self.base <= self.max:
            raise ValueError(f"reconnect backoff needs 0.001 <= base <= max, got {self.base} and {self.max}")

    def retry_policy(self) -> dict[str, Any]:
        """`config.core.v3.RetryPolicy` of `GrpcService.EnvoyGrpc.retry_policy` (only `retry_back_off`
        counts for xDS streams)."""
        backoff = {"base_interval": _duration(self.base), "max_interval": _duration(self.max)}
        return {"retry_back_off": backoff}


RECONNECT = Reconnect()


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def bootstrap_dict(
    node_id: str,
    *,
    xds: str = "127.0.0.1:18000",
    admin_port: int = 9901,
    delta: bool = True,
    node_cluster: str = "meshgate-gateway",
    tls: XdsTLS | None = None,
    reconnect: Reconnect = RECONNECT,
) -> dict[str, Any]:
    ads = {"ads": {}, "resource_api_version": "V3"}
    grpc_service = {"envoy_grpc": {"cluster_name": XDS_CLUSTER, "retry_policy": reconnect.retry_policy()}}
    return {
        "node": {"id": node_id, "cluster": node_cluster},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [grpc_service],
            },
            "cds_config": dict(ads),
            "lds_config": dict(ads),
        },
        "cluster_manager": {"local_cluster_name": GATEWAYS_CLUSTER},
        "static_resources": {"clusters": [_xds_cluster(xds, tls), _gateways_cluster()]},
        "layered_runtime": RUNTIME,
    }


def _gateways_cluster() -> dict[str, Any]:
    """The gateways' local cluster: EDS over ADS, never connected to (`_gateways`)."""
    return {
        "name": GATEWAYS_CLUSTER,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
    }


def _xds_cluster(xds: str, tls: XdsTLS | None) -> dict[str, Any]:
    host, port = split_host_port(xds)
    address = {"socket_address": {"address": host, "port_value": port}}
    cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if tls is not None:
        common: dict[str, Any] = {"validation_context": {"trusted_ca": {"filename": tls.ca_file}}}
        if tls.cert_file and tls.key_file:
            common["tls_certificates"] = [
                {"certificate_chain": {"filename": tls.cert_file}, "private_key": {"filename": tls.key_file}}
            ]
        context: dict[str, Any] = {"@type": _UPSTREAM_TLS, "common_tls_context": common}
        context["sni"] = tls.sni or host
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": context}
    return cluster


def envoy_bootstrap(node_id: str, **kwargs: Any) -> str:
    """`bootstrap_dict` as YAML: what `meshgate envoy-bootstrap` prints and `envoy -c` runs."""
    return yaml.safe_dump(bootstrap_dict(node_id, **kwargs), sort_keys=False)
