"""Clusters per model version (EDS or DNS), their endpoints, and the SDS secrets for upstream mTLS."""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterator
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2
from envoy.type.matcher.v3 import string_pb2

from meshgate.models import version_endpoints
from meshgate.models.kserve import knative_host
from meshgate.policy.model import Model, ModelVersion, UpstreamTLS

from . import _names
from ._health import EndpointHealthMap, eds_status, endpoint_health, fallback_versions
from ._names import Face, faces
from ._pb import ADS, duration, pack, split_host_port, u32
from ._secrets import sds
from .options import CompileOptions

__all__ = ["model_assignment", "model_clusters", "service_cluster"]

_C = cluster_pb2.Cluster
Cluster = Any
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_SAN = common_pb2.SubjectAltNameMatcher


def model_clusters(
    model: Model, options: CompileOptions, health: EndpointHealthMap | None = None
) -> Iterator[tuple[Cluster, Any]]:
    """(cluster, its EDS assignment or None when the cluster resolves DNS itself) per version.

    The assignment: the version's endpoints at priority 0, the other weighted versions' at priority 1
    (failover, see `_health`). EDS endpoints carry `health_status` from `health` (missing: UNKNOWN, the
    proto default). DNS clusters carry none (a health change would rebuild the cluster); they fail
    over on outlier ejection and on connect-failure retries only."""
    for face in faces(model):
        for version in model.versions:
            yield _cluster(model, face, version, options, health or {})


def _cluster(
    model: Model, face: Face, version: ModelVersion, options: CompileOptions, health: EndpointHealthMap
) -> tuple[Cluster, Any]:
    name = _names.cluster(model.name, version.name, face.suffix)
    cluster = _C(name=name, connect_timeout=duration(options.connect_timeout), lb_policy=_C.ROUND_ROBIN)
    assignment = model_assignment(model, version, health, face)
    if assignment is not None:
        cluster.type = _C.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(ADS)
        cluster.eds_cluster_config.service_name = name
    else:
        cluster.type = _C.STRICT_DNS
        cluster.load_assignment.CopyFrom(_version_assignment(model, face, version, {}, eds=False))
    _limits(cluster, model)
    if face.protocol == "v2-grpc":
        cluster.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(pack(_http2()))
    if model.upstream_tls.mode == "mtls":
        cluster.transport_socket.name = "envoy.transport_sockets.tls"
        cluster.transport_socket.typed_config.CopyFrom(pack(_upstream_tls(model.upstream_tls)))
    return cluster, assignment


def model_assignment(
    model: Model, version: ModelVersion, health: EndpointHealthMap, face: Face | None = None
) -> endpoint_pb2.ClusterLoadAssignment | None:
    """The EDS assignment of one version's cluster (of `face`, default the model's first), with
    endpoint health; None for a DNS cluster."""
    face = face or faces(model)[0]
    if not all(_is_ip(host) for host, _ in _addresses(version, face)):
        return None
    return _version_assignment(model, face, version, health, eds=True)


def _version_assignment(
    model: Model, face: Face, version: ModelVersion, health: EndpointHealthMap, *, eds: bool
) -> endpoint_pb2.ClusterLoadAssignment:
    own = version_endpoints(version, grpc=face.grpc_addresses)
    assignment = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=_names.cluster(model.name, version.name, face.suffix),
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=_lb_endpoints(model, face, version, health)
            )
        ],
    )
    backup = [
        lb
        for other in fallback_versions(model, version)
        for lb in _lb_endpoints(model, face, other, health)
        if not eds or _is_ip(lb.endpoint.address.socket_address.address)  # EDS takes IPs only
    ]
    if backup:
        assignment.endpoints.append(
            endpoint_components_pb2.LocalityLbEndpoints(priority=1, lb_endpoints=backup)
        )
    # Envoy scales each priority's healthy share by this factor / 100: with 100 x the endpoints, one
    # healthy endpoint keeps all traffic at priority 0 (no spill to priority 1, no panic mode sending to
    # unhealthy endpoints); priority 1 takes over only when none is healthy
    assignment.policy.overprovisioning_factor.CopyFrom(u32(100 * max(1, len(own))))
    return assignment


def _lb_endpoints(
    model: Model, face: Face, version: ModelVersion, health: EndpointHealthMap
) -> list[endpoint_components_pb2.LbEndpoint]:
    out = []
    for endpoint in version_endpoints(version, grpc=face.grpc_addresses):
        host, port = split_host_port(endpoint)
        lb = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=host, port_value=port)
                ),
                # Knative's gateway routes by Host: the routes of such a model rewrite it to this
                # (auto_host_rewrite), per endpoint, so a failover to another version carries its own
                hostname=knative_host(version) or "",
            ),
            health_status=eds_status(endpoint_health(health, model.name, version.name, endpoint)),
        )
        out.append(lb)
    return out


def service_cluster(name: str, address: str, options: CompileOptions, *, http2: bool = True) -> Cluster:
    """A cluster for one of meshgate's own services (gRPC: HTTP/2; else HTTP/1.1), DNS or static address."""
    host, port = split_host_port(address)
    cluster = _C(
        name=name,
        type=_C.STATIC if _is_ip(host) else _C.STRICT_DNS,
        connect_timeout=duration(options.connect_timeout),
        load_assignment=_assignment(name, [(host, port)]),
    )
    if http2:
        cluster.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(pack(_http2()))
    return cluster


def jwks_cluster(name: str, uri: str, options: CompileOptions) -> Cluster:
    """A cluster for an issuer's jwks_uri (HTTP/1.1; TLS with SNI and the system's CAs for https)."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    cluster = _C(
        name=name,
        type=_C.STATIC if _is_ip(host) else _C.STRICT_DNS,
        connect_timeout=duration(options.connect_timeout),
        load_assignment=_assignment(name, [(host, port)]),
    )
    if parts.scheme == "https":
        context = tls_pb2.UpstreamTlsContext(sni=host)
        context.common_tls_context.validation_context.trusted_ca.filename = options.jwks_ca_file
        cluster.transport_socket.name = "envoy.transport_sockets.tls"
        cluster.transport_socket.typed_config.CopyFrom(pack(context))
    return cluster


def _addresses(version: ModelVersion, face: Face) -> list[tuple[str, int]]:
    return [split_host_port(endpoint) for endpoint in version_endpoints(version, grpc=face.grpc_addresses)]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _assignment(name: str, addresses: list[tuple[str, int]]) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(address=host, port_value=port)
                            )
                        )
                    )
                    for host, port in addresses
                ]
            )
        ],
    )


def _http2() -> hpo_pb2.HttpProtocolOptions:
    return hpo_pb2.HttpProtocolOptions(
        explicit_http_config=hpo_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )


def _limits(cluster: Cluster, model: Model) -> None:
    breaker = model.circuit_breaker
    cluster.circuit_breakers.thresholds.append(
        circuit_breaker_pb2.CircuitBreakers.Thresholds(
            priority=base_pb2.DEFAULT,
            max_connections=u32(breaker.max_connections),
            max_pending_requests=u32(breaker.max_pending_requests),
            max_requests=u32(breaker.max_requests),
            max_retries=u32(breaker.max_retries),
        )
    )
    outlier = model.outlier_detection
    if outlier is None:  # the policy turned it off
        return
    cluster.outlier_detection.CopyFrom(
        outlier_detection_pb2.OutlierDetection(
            consecutive_5xx=u32(outlier.consecutive_5xx_errors),
            interval=duration(outlier.interval),
            base_ejection_time=duration(outlier.base_ejection_time),
            max_ejection_percent=u32(outlier.max_ejection_percent),
            # 5xx answers eject; connect failures (local origin) do not: a backend that is down is the
            # readiness prober's to mark UNHEALTHY in EDS, and a connect-failure retry moves the request
            # to the next priority at once. Ejecting it too would keep it out long after it came back.
            split_external_local_origin_errors=True,
            enforcing_consecutive_local_origin_failure=u32(0),
        )
    )


def _upstream_tls(tls: UpstreamTLS) -> tls_pb2.UpstreamTlsContext:
    assert tls.cert_file is not None and tls.key_file is not None and tls.ca_file is not None
    validation = common_pb2.CertificateValidationContext(
        match_typed_subject_alt_names=[
            _SAN(san_type=_san_type(san), matcher=string_pb2.StringMatcher(exact=san))
            for san in tls.subject_alt_names
        ]
    )
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[sds(_names.cert_secret(tls.cert_file, tls.key_file))],
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=validation,
                validation_context_sds_secret_config=sds(_names.ca_secret(tls.ca_file)),
            ),
        )
    )
    if tls.sni:
        context.sni = tls.sni
    return context


def _san_type(san: str) -> Any:
    if "://" in san:
        return _SAN.URI
    if _is_ip(san):
        return _SAN.IP_ADDRESS
    return _SAN.DNS
