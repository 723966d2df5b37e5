"""Policy in, xDS Snapshot out: pure, no I/O (certificate bytes are passed in by the caller)."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message  # type: ignore[import-untyped]

from meshgate.policy.model import Policy

from . import _names
from ._clusters import model_clusters, service_cluster
from ._listener import gateway_listener
from ._routes import route_configuration
from ._secrets import cert_files, secrets
from ._types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from .options import CompileOptions
from .snapshot import Snapshot

__all__ = ["cert_files", "compile_snapshot"]


def compile_snapshot(
    policy: Policy, options: CompileOptions | None = None, *, files: Mapping[str, bytes] | None = None
) -> Snapshot:
    """Every resource the gateway needs, checked for consistency. Raises InconsistentSnapshot.

    `files` maps certificate paths (see `cert_files`) to their bytes, inlined into SDS secrets;
    a path that is missing is referenced by file name instead (Envoy then reads it itself).
    """
    options = options or CompileOptions()
    clusters: list[tuple[str, Message]] = []
    endpoints: list[tuple[str, Message]] = []
    for model in policy.models:
        for cluster, assignment in model_clusters(model, options):
            clusters.append((cluster.name, cluster))
            if assignment is not None:
                endpoints.append((assignment.cluster_name, assignment))
    if options.enable_extauthz:
        clusters.append(
            (_names.EXTAUTHZ_CLUSTER, service_cluster(_names.EXTAUTHZ_CLUSTER, options.extauthz, options))
        )
    if options.enable_ratelimit:
        clusters.append(
            (_names.RATELIMIT_CLUSTER, service_cluster(_names.RATELIMIT_CLUSTER, options.ratelimit, options))
        )
    return Snapshot.build(
        {
            LISTENER: [(_names.LISTENER, gateway_listener(policy, options))],
            ROUTE: [(_names.ROUTE_CONFIG, route_configuration(policy, ratelimit=options.enable_ratelimit))],
            CLUSTER: clusters,
            ENDPOINT: endpoints,
            SECRET: [(s.name, s) for s in secrets(policy, files or {})],
        }
    )
