"""meshgate.xds: the policy compiled into Envoy resources and served over ADS (SotW and delta).

compile_snapshot (pure) -> Snapshot (immutable, consistency-checked) -> SnapshotCache -> ADS streams.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from .bootstrap import envoy_bootstrap
from .cache import SnapshotCache
from .compile import EndpointHealthMap, cert_files, compile_snapshot, update_health
from .options import CompileOptions
from .service import XdsService, options_from_env
from .snapshot import InconsistentSnapshot, Resource, Snapshot

if TYPE_CHECKING:
    from meshgate.models import Readiness
    from meshgate.server import Context

log = logging.getLogger("meshgate.xds")

__all__ = [
    "CompileOptions",
    "EndpointHealthMap",
    "InconsistentSnapshot",
    "Resource",
    "Snapshot",
    "SnapshotCache",
    "XdsService",
    "build_xds_service",
    "cert_files",
    "compile_snapshot",
    "envoy_bootstrap",
    "update_health",
]


def build_xds_service(ctx: Context, *, readiness: Readiness | None = None) -> XdsService:
    """The xds role of `meshgate serve`: an XdsService subscribed to the policy store; with
    `readiness` (the model prober) EDS carries endpoint health and traffic avoids versions that are down."""
    listen = {role: ctx.address(role) for role in ("extauthz", "ratelimit")}
    options = options_from_env(listen, dict(os.environ))
    service = XdsService(options=options, registry=ctx.registry, readiness=readiness)
    ctx.policy.subscribe("xds", service.prepare)
    return service
