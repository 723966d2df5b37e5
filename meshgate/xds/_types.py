"""xDS type URLs and the order in which a push sends them."""

from __future__ import annotations

_PREFIX = "type.googleapis.com/"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
ORDER = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
"""Make-before-break: what a resource references is sent before it (secrets, clusters, endpoints first)."""
WARMING = (SECRET, CLUSTER, ENDPOINT)
"""Types that must be in place before the listeners and routes that use them."""
ROUTING = (LISTENER, ROUTE)


def short(type_url: str) -> str:
    """'type.googleapis.com/envoy.config.cluster.v3.Cluster' -> 'Cluster'."""
    return type_url.rsplit(".", 1)[-1]
