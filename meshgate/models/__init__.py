"""meshgate.models: readiness of the model backends (KServe / Triton / OpenAI-style servers).

The interface other packages use (xds builds EDS health from it, admin shows it) is small:

- `EndpointHealth`: HEALTHY, UNHEALTHY or UNKNOWN (not probed yet, or probes disabled).
- `EndpointKey(model, version, endpoint)`: one backend of one model version; `endpoint` is the
  string `version_endpoints(version)` yields (`host:port`, or `svc.ns.svc.cluster.local:port` for a
  KServe reference), the same address xds puts in the cluster's endpoints.
- `Readiness`: what a running `Prober` offers: `health(model, version, endpoint)`, `snapshot()` and
  `on_change(callback)` (called in the event loop after every health transition with the keys that
  changed; returns a function that unsubscribes).

Nothing here imports tritonclient at import time: `meshgate.models.demo_server` runs KServe in a process
that must never load tritonclient.grpc (both register the same protobuf names).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from ._types import EndpointHealth, EndpointKey, EndpointState, Thresholds
from .probe import ProbeResult
from .prober import ProbeFn, Prober, check_once
from .targets import ProbeTarget, probe_targets, version_endpoints

__all__ = [
    "ChangeCallback",
    "EndpointHealth",
    "EndpointKey",
    "EndpointState",
    "ProbeFn",
    "ProbeResult",
    "ProbeTarget",
    "Prober",
    "Readiness",
    "Thresholds",
    "check_once",
    "probe_targets",
    "version_endpoints",
]

ChangeCallback = Callable[[Mapping[EndpointKey, EndpointHealth]], None]
"""Called with {key: new health} for the endpoints whose health just changed."""


class Readiness(Protocol):
    """The read side of the prober: what xds and admin depend on (a fake is easy to write)."""

    def health(self, model: str, version: str, endpoint: str) -> EndpointHealth:
        """Current health; UNKNOWN for an endpoint never probed (or not in the policy)."""
        ...

    def snapshot(self) -> Mapping[EndpointKey, EndpointState]:
        """Every probed endpoint and its state (a copy)."""
        ...

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback` after each health transition; returns the unsubscribe function."""
        ...
