"""Small builders for static Envoy bootstraps (plain dicts, written as YAML by tests.harness.envoy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "GRPC_INFERENCE_PREFIX",
    "bootstrap",
    "hcm_listener",
    "route",
    "router_filter",
    "static_cluster",
]

GRPC_INFERENCE_PREFIX = "/inference.GRPCInferenceService/"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def static_cluster(name: str, host: str, port: int, *, http2: bool = False) -> dict[str, Any]:
    """A STATIC cluster with one endpoint; ``http2=True`` for gRPC upstreams (h2c)."""
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                    ]
                }
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def route(prefix: str, cluster: str, *, timeout: str = "30s") -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, "timeout": timeout}}


def router_filter() -> dict[str, Any]:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}


def hcm_listener(
    name: str,
    routes: Sequence[Mapping[str, Any]],
    *,
    port: int = 0,
    http_filters: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A listener on 127.0.0.1:``port`` (0: ask ``Envoy.listener_port(name)``) with an HTTP connection
    manager accepting HTTP/1.1 and h2c (codec AUTO); ``http_filters`` run before the router."""
    hcm = {
        "@type": _HCM,
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {
            "name": f"{name}_routes",
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [dict(r) for r in routes]}],
        },
        "http_filters": [*map(dict, http_filters), router_filter()],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def bootstrap(
    listeners: Sequence[Mapping[str, Any]], clusters: Sequence[Mapping[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A bootstrap with static listeners and clusters (the admin block is added by ``Envoy``)."""
    return {
        "static_resources": {
            "listeners": [dict(x) for x in listeners],
            "clusters": [dict(c) for c in clusters],
        },
        **extra,
    }
