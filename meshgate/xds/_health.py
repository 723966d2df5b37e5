"""Endpoint health as a compile input, and which versions a version fails over to. Pure.

`EndpointHealthMap` maps `EndpointKey(model, version, endpoint)` (endpoint strings exactly as
`meshgate.models.version_endpoints` yields them) to the prober's health; a key that is missing is
UNKNOWN, which Envoy's load balancer treats as healthy (a restarted meshgate, or a model whose probes
are disabled, never black-holes traffic).

Failover (docs/xds.md "Endpoint health"): the assignment of a version's cluster lists its own endpoints
at priority 0 and the endpoints of the model's other weighted versions at priority 1, balanced evenly
(no weights: a canary weight change touches only the route, never an assignment). Envoy sends
everything to priority 0 while one of its endpoints is healthy (the overprovisioning factor is 100 x
its endpoints), and everything to priority 1 when none is. So Envoy's weighted_clusters still pick a
version's cluster by the policy weights, and a version that is down serves its share from the healthy
versions: only ClusterLoadAssignments change with health, never routes. The shadow version fails over
to nothing (mirrored traffic must never reach the primaries).
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import health_check_pb2

from meshgate.models import EndpointHealth, EndpointKey
from meshgate.policy.model import Model, ModelVersion

__all__ = ["EndpointHealthMap", "eds_status", "endpoint_health", "fallback_versions"]

EndpointHealthMap = Mapping[EndpointKey, EndpointHealth]

_STATUS = {
    EndpointHealth.UNKNOWN: health_check_pb2.UNKNOWN,
    EndpointHealth.HEALTHY: health_check_pb2.HEALTHY,
    EndpointHealth.UNHEALTHY: health_check_pb2.UNHEALTHY,
}


def endpoint_health(health: EndpointHealthMap, model: str, version: str, endpoint: str) -> EndpointHealth:
    return health.get(EndpointKey(model, version, endpoint), EndpointHealth.UNKNOWN)


def eds_status(value: EndpointHealth) -> int:
    """The `envoy.config.core.v3.HealthStatus` of an endpoint health (UNKNOWN is the proto default)."""
    return int(_STATUS[value])


def fallback_versions(model: Model, version: ModelVersion) -> tuple[ModelVersion, ...]:
    """The versions whose endpoints back `version` up (priority 1): the model's other versions with a
    weight; none for the shadow version."""
    if model.shadow is not None and model.shadow.version == version.name:
        return ()
    return tuple(v for v in model.versions if v.weight and v.name != version.name)
