"""Policy in, xDS Snapshot out: pure, no I/O (certificate bytes are passed in by the caller)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from google.protobuf.message import Message  # type: ignore[import-untyped]

from meshgate.policy.model import Policy

from . import _names
from ._authz_http import HTTP_CLUSTER, http_cluster, uses_http
from ._clusters import jwks_cluster, model_assignment, model_clusters, service_cluster
from ._health import EndpointHealthMap
from ._listener import gateway_listener
from ._names import faces
from ._native import jwks_remote
from ._routes import route_configuration
from ._secrets import cert_files, secrets
from ._server import SERVER_CLUSTER, serves
from ._types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from .options import CompileOptions
from .snapshot import Snapshot

__all__ = ["EndpointHealthMap", "cert_files", "compile_snapshot", "refresh_routes", "update_health"]


def compile_snapshot(
    policy: Policy,
    options: CompileOptions | None = None,
    *,
    files: Mapping[str, bytes] | None = None,
    health: EndpointHealthMap | None = None,
    now: float | None = None,
) -> Snapshot:
    """Every resource the gateway needs, checked for consistency. Raises InconsistentSnapshot.

    `files` maps certificate paths (see `cert_files`) to their bytes, inlined into SDS secrets;
    a path that is missing is referenced by file name instead (Envoy then reads it itself).
    `now`: the time the native fast routes are compiled at (`_fast`; None: the clock's).
    `health` maps (model, version, endpoint) to the prober's health (missing: UNKNOWN): EDS endpoints
    carry it; a version with no healthy endpoint fails over to the model's other versions (`_health`).
    """
    options = options or CompileOptions()
    health = health or {}
    clusters: list[tuple[str, Message]] = []
    endpoints: list[tuple[str, Message]] = []
    for model in policy.models:
        for cluster, assignment in model_clusters(model, options, health):
            clusters.append((cluster.name, cluster))
            if assignment is not None:
                endpoints.append((assignment.cluster_name, assignment))
    for issuer in jwks_remote(policy) if policy.gateway.enforcement != "ext_authz" else ():
        name = _names.jwks_cluster(issuer.name)
        clusters.append((name, jwks_cluster(name, issuer.jwks_uri or "", options)))
    if options.enable_extauthz:
        clusters.append(
            (_names.EXTAUTHZ_CLUSTER, service_cluster(_names.EXTAUTHZ_CLUSTER, options.extauthz, options))
        )
    if options.enable_extauthz and uses_http(policy):
        clusters.append((HTTP_CLUSTER, http_cluster(options)))
    if serves(policy, "v2-grpc"):  # gRPC ServerLive/Ready/Metadata, answered by meshgate (`_server`)
        clusters.append((SERVER_CLUSTER, service_cluster(SERVER_CLUSTER, options.extauthz, options)))
    if options.enable_ratelimit:
        clusters.append(
            (_names.RATELIMIT_CLUSTER, service_cluster(_names.RATELIMIT_CLUSTER, options.ratelimit, options))
        )
    return Snapshot.build(
        {
            LISTENER: [(_names.LISTENER, gateway_listener(policy, options))],
            ROUTE: [_routes(policy, options, now)],
            CLUSTER: clusters,
            ENDPOINT: endpoints,
            SECRET: [(s.name, s) for s in secrets(policy, files or {})],
        }
    )


def _routes(policy: Policy, options: CompileOptions, now: float | None) -> tuple[str, Message]:
    config = route_configuration(
        policy,
        ratelimit=options.enable_ratelimit,
        extauthz=options.enable_extauthz,
        traced=options.tracing is not None,
        now=now,
        fast_stats=options.fast_stats,
    )
    return _names.ROUTE_CONFIG, config


def refresh_routes(snapshot: Snapshot, policy: Policy, options: CompileOptions, *, now: float) -> Snapshot:
    """`snapshot` (compiled from `policy` with `options`) with its routes compiled at `now` (the native
    fast routes' iat bound, `CompileOptions.fast_refresh`); every other resource is reused."""
    return snapshot.replace({ROUTE: [_routes(policy, options, now)]})


def update_health(
    snapshot: Snapshot, policy: Policy, health: EndpointHealthMap, *, models: Collection[str]
) -> Snapshot:
    """`snapshot` (compiled from `policy`) as if compiled with endpoint health `health`, given that only
    endpoints of `models` changed: the EDS assignments of those models' versions are rebuilt (each one
    lists the model's other versions as failover, so all of them), nothing else. Every other resource is
    reused (same bytes, same version). Equal to `compile_snapshot(policy, ..., health=health)`."""
    assignments: list[tuple[str, Message]] = []
    for model in policy.models:
        if model.name in models:
            for face in faces(model):
                for version in model.versions:
                    assignment = model_assignment(model, version, health, face)
                    if assignment is not None:
                        assignments.append((assignment.cluster_name, assignment))
    return snapshot.replace({ENDPOINT: assignments})
