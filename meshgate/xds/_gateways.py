"""The gateways connected to this meshgate, served as the endpoints of their own local cluster.

Native quotas (`_native_quotas`, docs/native.md) divide each limit among the gateways with Envoy's
`local_cluster_rate_limit`: a gateway's share of a bucket is 1 / (hosts of the cluster its bootstrap
names in `cluster_manager.local_cluster_name`). That cluster is `GATEWAYS_CLUSTER`, an EDS cluster of
the bootstrap (`bootstrap.py`), and its endpoints are what this module builds: one per gateway whose ADS
stream asked for it, so the share follows gateways as they come and go with no recompile and no
change to the routes (a route change would refill every bucket).

A gateway is counted by node id while at least one of its streams is open (a reconnect that opens the
new stream before the old one closes counts it once). Each endpoint's address is a pipe path derived
from the node id: unique per gateway and never connected to (nothing routes to this cluster).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable

from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2

__all__ = ["GATEWAYS_CLUSTER", "Gateways", "gateways_assignment"]

GATEWAYS_CLUSTER = "meshgate|gateways"
"""The gateways' local cluster (and its EDS resource name)."""


def _address(node: str) -> address_pb2.Address:
    digest = hashlib.sha256(node.encode()).hexdigest()[:16]
    return address_pb2.Address(pipe=address_pb2.Pipe(path=f"/meshgate/gateways/{digest}"))


def gateways_assignment(nodes: tuple[str, ...]) -> endpoint_pb2.ClusterLoadAssignment:
    """One endpoint per gateway node id (its hostname, for /clusters and config_dump)."""
    endpoints = [
        ec.LbEndpoint(endpoint=ec.Endpoint(address=_address(node), hostname=node)) for node in sorted(nodes)
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=GATEWAYS_CLUSTER, endpoints=[ec.LocalityLbEndpoints(lb_endpoints=endpoints)]
    )


class Gateways:
    """Node ids of the connected gateways; `on_change` runs when the set of ids changes."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._streams: Counter[str] = Counter()
        self.on_change = on_change

    def join(self, node: str) -> None:
        self._streams[node] += 1
        if self._streams[node] == 1:
            self.on_change()

    def leave(self, node: str) -> None:
        if self._streams[node] <= 1:
            self._streams.pop(node, None)
            self.on_change()
        else:
            self._streams[node] -= 1

    def members(self) -> tuple[str, ...]:
        return tuple(sorted(self._streams))

    def __len__(self) -> int:
        return len(self._streams)
