"""meshgate.xds: the policy compiled into Envoy resources and served over ADS (SotW and delta).

compile_snapshot (pure) -> Snapshot (immutable, consistency-checked) -> SnapshotCache -> ADS streams.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from .bootstrap import envoy_bootstrap
from .cache import SnapshotCache
from .compile import cert_files, compile_snapshot
from .options import CompileOptions
from .service import XdsService, options_from_env
from .snapshot import InconsistentSnapshot, Resource, Snapshot

if TYPE_CHECKING:
    from meshgate.server import Context

log = logging.getLogger("meshgate.xds")

__all__ = [
    "CompileOptions",
    "InconsistentSnapshot",
    "Resource",
    "Snapshot",
    "SnapshotCache",
    "XdsService",
    "build_xds_service",
    "cert_files",
    "compile_snapshot",
    "envoy_bootstrap",
]


def build_xds_service(ctx: Context) -> XdsService:
    """The xds role of `meshgate serve`: an XdsService subscribed to the policy store."""
    listen = {role: ctx.address(role) for role in ("extauthz", "ratelimit")}
    options = options_from_env(listen, dict(os.environ))
    service = XdsService(options=options, registry=ctx.registry)
    ctx.policy.subscribe("xds", service.prepare)
    return service
