"""Prometheus metrics of the xDS server, registered on the registry it is given (never at import)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ._types import ORDER, short
from .snapshot import Snapshot

__all__ = ["XdsMetrics"]


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._pushes = Counter(
            "meshgate_xds_pushes", "xDS responses sent, by type.", ["type"], registry=registry
        )
        self._bytes = Counter(
            "meshgate_xds_push_bytes", "Serialized resource bytes sent, by type.", ["type"], registry=registry
        )
        self._nacks = Counter(
            "meshgate_xds_nacks", "xDS responses a proxy rejected, by type.", ["type"], registry=registry
        )
        self._proxies = Gauge("meshgate_xds_connected_proxies", "Open ADS streams.", registry=registry)
        self._convergence = Histogram(
            "meshgate_xds_convergence_seconds",
            "From a policy change (the first of a debounced burst) to a proxy ACKing all of it.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self._resources = Gauge(
            "meshgate_xds_snapshot_resources",
            "Resources in the published snapshot, by type.",
            ["type"],
            registry=registry,
        )
        self._published = Counter(
            "meshgate_xds_snapshots_published", "Snapshots published.", registry=registry
        )

    def connected(self, delta: int) -> None:
        self._proxies.inc(delta)

    def pushed(self, type_url: str, nbytes: int) -> None:
        self._pushes.labels(short(type_url)).inc()
        self._bytes.labels(short(type_url)).inc(nbytes)

    def nacked(self, type_url: str) -> None:
        self._nacks.labels(short(type_url)).inc()

    def converged(self, seconds: float) -> None:
        self._convergence.observe(seconds)

    def published(self, snapshot: Snapshot) -> None:
        self._published.inc()
        for type_url in ORDER:
            self._resources.labels(short(type_url)).set(len(snapshot[type_url]))
