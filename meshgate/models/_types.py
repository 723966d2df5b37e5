"""Endpoint health: the values and the pure state machine (no I/O, no clock).

An endpoint starts UNKNOWN. Its first probe result decides at once (one success: HEALTHY, one failure:
UNHEALTHY), as Envoy's own active health checking does at startup. After that the thresholds apply:
`unhealthy` consecutive failures turn a HEALTHY endpoint UNHEALTHY, `healthy` consecutive successes turn
an UNHEALTHY one HEALTHY; anything in between (flapping) leaves the health as it was.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

__all__ = ["EndpointHealth", "EndpointKey", "EndpointState", "Thresholds", "observe"]


class EndpointHealth(enum.Enum):
    UNKNOWN = "unknown"
    """Not probed yet, or probes are disabled: routable (Envoy treats UNKNOWN as healthy)."""
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, order=True)
class EndpointKey:
    model: str
    version: str
    endpoint: str

    def __str__(self) -> str:
        return f"{self.model}/{self.version}/{self.endpoint}"


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    healthy: int = 2
    unhealthy: int = 3


@dataclass(frozen=True, kw_only=True)
class EndpointState:
    health: EndpointHealth = EndpointHealth.UNKNOWN
    successes: int = 0
    """Consecutive successful probes."""
    failures: int = 0
    """Consecutive failed probes."""
    detail: str = ""
    """What the last probe found ("ready", "connection refused", "model not ready", ...)."""
    probes: int = 0
    """Probes observed since the endpoint appeared."""


def observe(state: EndpointState, ok: bool, thresholds: Thresholds, detail: str = "") -> EndpointState:
    """The state after one probe result."""
    successes = state.successes + 1 if ok else 0
    failures = 0 if ok else state.failures + 1
    health = state.health
    if health is EndpointHealth.UNKNOWN:
        health = EndpointHealth.HEALTHY if ok else EndpointHealth.UNHEALTHY
    elif health is EndpointHealth.HEALTHY and failures >= thresholds.unhealthy:
        health = EndpointHealth.UNHEALTHY
    elif health is EndpointHealth.UNHEALTHY and successes >= thresholds.healthy:
        health = EndpointHealth.HEALTHY
    return replace(
        state, health=health, successes=successes, failures=failures, detail=detail, probes=state.probes + 1
    )
