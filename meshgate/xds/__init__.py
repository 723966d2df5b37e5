"""meshgate.xds: the policy compiled into Envoy resources and served over ADS (SotW and delta).

compile_snapshot (pure) -> Snapshot (immutable, consistency-checked) -> SnapshotCache -> ADS streams.
"""

from __future__ import annotations

import logging

from .bootstrap import envoy_bootstrap
from .cache import SnapshotCache
from .compile import EndpointHealthMap, cert_files, compile_snapshot, update_health
from .options import CompileOptions, options_from_env
from .service import XdsService
from .snapshot import InconsistentSnapshot, Resource, Snapshot

log = logging.getLogger("meshgate.xds")

__all__ = [
    "CompileOptions",
    "EndpointHealthMap",
    "InconsistentSnapshot",
    "Resource",
    "Snapshot",
    "SnapshotCache",
    "XdsService",
    "cert_files",
    "compile_snapshot",
    "envoy_bootstrap",
    "options_from_env",
    "update_health",
]
