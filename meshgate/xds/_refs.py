"""What each compiled resource references by name: the input of the snapshot consistency check."""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf.message import Message  # type: ignore[import-untyped]

from ._route_tree import flat_routes
from ._types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

__all__ = ["references"]

Ref = tuple[str, str]


def references(type_url: str, message: Message) -> Iterator[Ref]:
    """(type URL, name) of every resource `message` needs."""
    if type_url == LISTENER:
        assert isinstance(message, listener_pb2.Listener)
        yield from _listener(message)
    elif type_url == ROUTE:
        assert isinstance(message, route_pb2.RouteConfiguration)
        yield from _routes(message)
    elif type_url == CLUSTER:
        assert isinstance(message, cluster_pb2.Cluster)
        yield from _cluster(message)


def _listener(listener: listener_pb2.Listener) -> Iterator[Ref]:
    for chain in listener.filter_chains:
        tls = tls_pb2.DownstreamTlsContext()
        if chain.HasField("transport_socket") and chain.transport_socket.typed_config.Unpack(tls):
            yield from _tls_secrets(tls.common_tls_context)
        for network_filter in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if not network_filter.typed_config.Unpack(hcm):
                continue
            if hcm.HasField("rds"):
                yield ROUTE, hcm.rds.route_config_name
            for http_filter in hcm.http_filters:
                authz = ext_authz_pb2.ExtAuthz()
                limit = rate_limit_pb2.RateLimit()
                if http_filter.typed_config.Unpack(authz):
                    if authz.HasField("http_service"):
                        yield CLUSTER, authz.http_service.server_uri.cluster
                    else:
                        yield CLUSTER, authz.grpc_service.envoy_grpc.cluster_name
                elif http_filter.typed_config.Unpack(limit):
                    yield CLUSTER, limit.rate_limit_service.grpc_service.envoy_grpc.cluster_name


def _routes(config: route_pb2.RouteConfiguration) -> Iterator[Ref]:
    for vhost in config.virtual_hosts:
        for route in flat_routes(vhost):
            action = route.route
            if action.cluster:
                yield CLUSTER, action.cluster
            for weighted in action.weighted_clusters.clusters:
                yield CLUSTER, weighted.name
            for mirror in action.request_mirror_policies:
                yield CLUSTER, mirror.cluster


def _cluster(cluster: cluster_pb2.Cluster) -> Iterator[Ref]:
    if cluster.type == cluster_pb2.Cluster.EDS:
        yield ENDPOINT, cluster.eds_cluster_config.service_name or cluster.name
    tls = tls_pb2.UpstreamTlsContext()
    if cluster.HasField("transport_socket") and cluster.transport_socket.typed_config.Unpack(tls):
        yield from _tls_secrets(tls.common_tls_context)


def _tls_secrets(common: tls_pb2.CommonTlsContext) -> Iterator[Ref]:
    for sds in common.tls_certificate_sds_secret_configs:
        yield SECRET, sds.name
    if common.HasField("combined_validation_context"):
        yield SECRET, common.combined_validation_context.validation_context_sds_secret_config.name
    if common.HasField("validation_context_sds_secret_config"):
        yield SECRET, common.validation_context_sds_secret_config.name
