"""A snapshot as plain JSON: for golden files, debugging, and a static Envoy bootstrap.

`static_bootstrap` inlines everything ADS would send (routes into the listener, endpoints into
the clusters, secrets as static secrets) so `envoy --mode validate` checks every compiled resource.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format  # type: ignore[import-untyped]
from google.protobuf.message import Message  # type: ignore[import-untyped]

from ._gateways import GATEWAYS_CLUSTER, gateways_assignment
from ._pb import duration, pack
from ._types import CLUSTER, ENDPOINT, LISTENER, ORDER, ROUTE, SECRET, short
from .bootstrap import RUNTIME
from .snapshot import Snapshot

__all__ = ["snapshot_json", "static_bootstrap", "to_dict"]


def to_dict(message: Message) -> dict[str, Any]:
    converted: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return converted


def snapshot_json(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    """{"Cluster": {name: resource as JSON}, ...} in make-before-break order, names sorted."""
    return {
        short(t): {name: to_dict(snapshot[t][name].message) for name in sorted(snapshot[t])} for t in ORDER
    }


def static_bootstrap(snapshot: Snapshot) -> dict[str, Any]:
    """A bootstrap whose static_resources hold every resource of `snapshot` (no xDS needed)."""
    routes = {name: r.message for name, r in snapshot[ROUTE].items()}
    assignments = {name: r.message for name, r in snapshot[ENDPOINT].items()}
    listeners = [_inline_routes(r.message, routes) for r in snapshot[LISTENER].values()]
    clusters = [_inline_cluster(r.message, assignments) for r in snapshot[CLUSTER].values()]
    # the gateways' local cluster (native quotas' shares, `_gateways`): the bootstrap's, here static
    local = assignments.get(GATEWAYS_CLUSTER) or gateways_assignment(("static",))
    clusters.append(
        cluster_pb2.Cluster(
            name=GATEWAYS_CLUSTER,
            type=cluster_pb2.Cluster.STATIC,
            connect_timeout=duration(1.0),
            load_assignment=local,
        )
    )
    return {
        "cluster_manager": {"local_cluster_name": GATEWAYS_CLUSTER},
        "layered_runtime": RUNTIME,
        "static_resources": {
            "listeners": [to_dict(x) for x in listeners],
            "clusters": [to_dict(c) for c in clusters],
            "secrets": [to_dict(s.message) for s in snapshot[SECRET].values()],
        },
    }


def _inline_routes(message: Message, routes: dict[str, Message]) -> listener_pb2.Listener:
    listener = listener_pb2.Listener()
    listener.CopyFrom(message)
    for chain in listener.filter_chains:
        tls = tls_pb2.DownstreamTlsContext()
        if chain.HasField("transport_socket") and chain.transport_socket.typed_config.Unpack(tls):
            _static_secrets(tls.common_tls_context)
            chain.transport_socket.typed_config.CopyFrom(pack(tls))
        for network_filter in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if network_filter.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                route = routes[hcm.rds.route_config_name]
                assert isinstance(route, route_pb2.RouteConfiguration)
                hcm.route_config.CopyFrom(route)
                network_filter.typed_config.CopyFrom(pack(hcm))
    return listener


def _inline_cluster(message: Message, assignments: dict[str, Message]) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster()
    cluster.CopyFrom(message)
    if cluster.type == cluster_pb2.Cluster.EDS:
        assignment = assignments[cluster.eds_cluster_config.service_name or cluster.name]
        assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
        cluster.ClearField("eds_cluster_config")
        cluster.type = cluster_pb2.Cluster.STATIC
        cluster.load_assignment.CopyFrom(assignment)
    tls = tls_pb2.UpstreamTlsContext()
    if cluster.HasField("transport_socket") and cluster.transport_socket.typed_config.Unpack(tls):
        _static_secrets(tls.common_tls_context)
        cluster.transport_socket.typed_config.CopyFrom(pack(tls))
    return cluster


def _static_secrets(common: tls_pb2.CommonTlsContext) -> None:
    """Static secrets are found by name alone: drop the SDS config source of every reference."""
    for sds in common.tls_certificate_sds_secret_configs:
        sds.ClearField("sds_config")
    if common.HasField("combined_validation_context"):
        common.combined_validation_context.validation_context_sds_secret_config.ClearField("sds_config")
    if common.HasField("validation_context_sds_secret_config"):
        common.validation_context_sds_secret_config.ClearField("sds_config")
