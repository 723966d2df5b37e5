"""Routes per model: KServe v2 REST by path, everything by the x-meshgate-model header.

Per model, A/B header routes come first (they pin a version), then the canary route
(weighted clusters) with the shadow mirror. Matches of different models never overlap.
Routes never depend on endpoint health: a version that is down fails over inside its cluster
(priority 1, see `_health`); connect-failure retries go to another endpoint and priority at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2 import PreviousHostsPredicate
from envoy.extensions.retry.priority.previous_priorities.v3.previous_priorities_config_pb2 import (
    PreviousPrioritiesConfig,
)
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2

from meshgate import contract
from meshgate.contract import reads_usage
from meshgate.models.kserve import knative_host
from meshgate.policy.model import Model, Policy

from . import _names
from ._authz_http import model_list_routes, uses_http
from ._bodies import EXTAUTHZ_FILTER, grpc_route, json_type, size_routes, stream_body, stream_refusal
from ._fast import grants_of, pinned_of, with_fast_routes
from ._health import fallback_versions
from ._names import Face
from ._openai import SERVED_NAME_FILTER, served_name
from ._pb import duration, pack, u32
from ._quotas import model_rate_limits
from ._route_tree import virtual_host
from ._server import server_routes
from ._usage import json_answer_limit, route_filters
from ._usage_chunk import OPTIONS_HEADER

__all__ = ["route_configuration"]

_MILLION = percent_pb2.FractionalPercent.MILLION
RATELIMIT_FILTER = "envoy.filters.http.ratelimit"
_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
_PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"
NO_ROUTE = "meshgate|no_route"


def route_configuration(
    policy: Policy,
    *,
    ratelimit: bool = True,
    extauthz: bool = True,
    traced: bool = False,
    now: float | None = None,
    fast_stats: bool = False,
) -> route_pb2.RouteConfiguration:
    """`now`: the time (Unix seconds) the native fast routes' iat bound is compiled from (`_fast`;
    None: the clock's); `fast_stats`: the fast routes count their requests (`_fast.FAST_STATS`)."""
    now = time.time() if now is None else now
    per_model: list[tuple[str, list[rc.Route]]] = []
    usage = ratelimit and any(reads_usage(m) for m in policy.models)
    served = has_served_names(policy)
    grants, pinned = grants_of(policy), pinned_of(policy)  # (native, auto: the fast routes' roles, algs)
    for model in policy.models:
        limits = model_rate_limits(policy, model, traced=traced) if ratelimit else None
        routes: list[rc.Route] = []
        per_model.append((model.name, routes))
        for route in size_routes(model) if model.serves("v2-rest") else ():
            if extauthz:  # (ext_authz runs before the answer: a 401 comes first)
                route.typed_per_filter_config[EXTAUTHZ_FILTER].CopyFrom(pack(stream_body()))
            routes.append(route)  # before any other: a body too large never reaches a backend
        if model.serves("v2-grpc") and not model.stream_infer:
            routes.append(stream_refusal(model))
        for face in _names.faces(model):
            face_routes = list(_model_routes(model, face))
            for route in face_routes:
                if route.match.path_separated_prefix and extauthz:  # the model is in the path: stream it
                    route.typed_per_filter_config[EXTAUTHZ_FILTER].CopyFrom(pack(stream_body()))
                if limits is not None:
                    route.typed_per_filter_config[RATELIMIT_FILTER].CopyFrom(pack(limits))
                if usage and reads_usage(model):
                    _read_usage(route)
                    json_answer_limit(route, model)  # its JSON answers held up to max_json_answer_bytes
                if served and reads_usage(model):
                    _enable(route, SERVED_NAME_FILTER)  # each version's name: _served_names
            routes += with_fast_routes(  # `_fast`
                policy, model, face_routes, now=now, grants=grants, pinned=pinned, stats=fast_stats
            )
    no_model = server_routes(policy, extauthz=extauthz)  # /v2/health/*, gRPC ServerReady, ... (no model)
    if any(m.serves("v2-grpc") for m in policy.models):
        no_model.append(grpc_route(policy, extauthz=extauthz))  # ext_authz reads the message head there
    if extauthz and uses_http(policy):
        no_model += model_list_routes(policy)  # answered by extauthz's HTTP server as their upstream
    unrouted = _unrouted()
    if usage:
        _read_usage(unrouted)  # an OpenAI request matches it first: its model is only in the body
    if served:
        _enable(unrouted, SERVED_NAME_FILTER)  # in the chain, so the model route's name applies
    no_model.append(unrouted)
    host = virtual_host(_names.VIRTUAL_HOST, per_model, no_model)  # a matcher tree from 3 models on
    return route_pb2.RouteConfiguration(name=_names.ROUTE_CONFIG, virtual_hosts=[host])


def has_served_names(policy: Policy) -> bool:
    """Whether an OpenAI model's version serves another name (the served_name filter is needed)."""
    return any(reads_usage(m) and any(v.served_name for v in m.versions) for m in policy.models)


def _enable(route: rc.Route, name: str) -> None:
    """Enable filter `name` (disabled on the listener) on `route`, unless the route configures it."""
    if name not in route.typed_per_filter_config:
        enabled = rc.FilterConfig()
        enabled.config.SetInParent()
        route.typed_per_filter_config[name].CopyFrom(pack(enabled))


def _served_name(model: Model, version: str) -> rc.FilterConfig | None:
    """The served_name filter's config for `version` of `model` (enabling it), or None."""
    found = model.version(version)
    if found is None or not found.served_name or not reads_usage(model):
        return None
    return rc.FilterConfig(config=pack(served_name(found.served_name)))


def _read_usage(route: rc.Route) -> None:
    """Enable the LLM usage filters on `route` (docs/llm.md); the backend never sees the stream flag."""
    for name, config in route_filters():
        route.typed_per_filter_config[name].CopyFrom(pack(config))
    route.request_headers_to_remove.append(contract.STREAM_HEADER)
    route.request_headers_to_remove.append(OPTIONS_HEADER)


def _unrouted() -> rc.Route:
    """The last route: anything no model route matches. Envoy runs ext_authz only for a request that
    matched a route, so without it a model named only in the body (OpenAI JSON, Triton gRPC) would be a
    404 before extauthz could set x-meshgate-model (which clears the route cache and re-selects the
    model's route). What still matches it after that (no model, or a server-level call) gets a 404."""
    body = contract.NO_ROUTE_BODY.encode()
    return rc.Route(
        name=NO_ROUTE,
        match=rc.RouteMatch(prefix="/"),
        direct_response=rc.DirectResponseAction(status=404, body=base_pb2.DataSource(inline_bytes=body)),
        response_headers_to_add=[json_type()],
    )


def _by_header(model: Model, face: Face, *more: rc.HeaderMatcher) -> rc.RouteMatch:
    """A request that extauthz named `model`; for the gRPC face of a two-protocol model, a gRPC one."""
    headers = [_header(_names.MODEL_HEADER, model.name), *more]
    if face.suffix:
        grpc = string_pb2.StringMatcher(prefix="application/grpc")
        headers.append(rc.HeaderMatcher(name="content-type", string_match=grpc))
    return rc.RouteMatch(prefix="/", headers=headers)


def _matches(model: Model, face: Face) -> Iterator[rc.RouteMatch]:
    yield _by_header(model, face)
    if face.protocol == "v2-rest":
        yield rc.RouteMatch(path_separated_prefix=f"/v2/models/{model.name}")


def _header(name: str, value: str) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))


def _route_name(model: Model, face: Face, what: str) -> str:
    return f"{model.name}|{face.suffix}|{what}" if face.suffix else f"{model.name}|{what}"


def _pinned(model: Model, face: Face) -> Iterator[rc.Route]:
    """A request that names a version goes to that version's cluster, whatever the weights and A/B say.

    REST: `/v2/models/{m}/versions/{pin}` (`pin`: the version's name or its backend_version), the path
    rewritten to what the backend serves: `/v2/models/{m}/versions/{backend_version}` (Triton), or the
    unversioned `/v2/models/{m}` (KServe answers 501 on versioned URLs). These come first: after
    ext_authz sets x-meshgate-model the request is matched again, and must not fall to the canary.
    gRPC (and anything routed by header): the version extauthz read from the body, in
    x-meshgate-model-version; the message reaches the backend as the client sent it."""
    base = f"/v2/models/{model.name}"
    for version in model.versions:
        cluster = _names.cluster(model.name, version.name, face.suffix)
        backend = f"{base}/versions/{version.backend_version}" if version.backend_version else base
        for pin in version.pins:
            name = _route_name(model, face, f"pin|{pin}")
            action = _action(model, face, cluster=cluster, version=version.name)
            if face.protocol == "v2-rest":
                prefix = f"{base}/versions/{pin}"
                if prefix != backend:
                    action.prefix_rewrite = backend
                match = rc.RouteMatch(path_separated_prefix=prefix)
            else:
                match = _by_header(model, face, _header(_names.VERSION_HEADER, pin))
            yield rc.Route(name=name, match=match, route=action)


def _model_routes(model: Model, face: Face) -> Iterator[rc.Route]:
    if face.protocol != "openai":  # an OpenAI request names no version
        yield from _pinned(model, face)
    for match in _matches(model, face):
        for ab in model.ab:
            pinned = rc.RouteMatch()
            pinned.CopyFrom(match)
            pinned.headers.append(
                rc.HeaderMatcher(name=ab.header, string_match=string_pb2.StringMatcher(exact=ab.value))
            )
            route = rc.Route(
                name=_route_name(model, face, f"ab|{ab.header}={ab.value}"),
                match=pinned,
                route=_action(
                    model,
                    face,
                    cluster=_names.cluster(model.name, ab.version, face.suffix),
                    version=ab.version,
                ),
            )
            name = _served_name(model, ab.version)
            if name is not None:
                route.typed_per_filter_config[SERVED_NAME_FILTER].CopyFrom(pack(name))
            yield route
        route = rc.Route(name=_route_name(model, face, "canary"), match=match, route=_canary(model, face))
        weighted = [v for v in model.versions if v.weight]
        name = _served_name(model, weighted[0].name) if len(weighted) == 1 else None
        if name is not None:
            route.typed_per_filter_config[SERVED_NAME_FILTER].CopyFrom(pack(name))
        yield route


def _action(model: Model, face: Face, *, cluster: str = "", version: str = "") -> rc.RouteAction:
    """`version`: the one version `cluster` serves (none: weighted clusters)."""
    action = rc.RouteAction(timeout=duration(model.timeout))
    if model.idle_timeout is not None:  # a stalled stream ends here, a long one still within `timeout`
        action.idle_timeout.CopyFrom(duration(model.idle_timeout))
    if cluster:
        action.cluster = cluster
    retries = model.retries
    if retries.attempts:
        policy = action.retry_policy
        policy.retry_on = ",".join(retries.retry_on)
        policy.num_retries.CopyFrom(u32(retries.attempts))
        if retries.per_try_timeout is not None:
            policy.per_try_timeout.CopyFrom(duration(retries.per_try_timeout))
        # a retry goes to another endpoint, and to the next priority (the other versions' endpoints,
        # see _health): a request sent to a backend that just went away is served by a healthy one
        policy.retry_host_predicate.append(
            rc.RetryPolicy.RetryHostPredicate(
                name=_PREVIOUS_HOSTS, typed_config=pack(PreviousHostsPredicate())
            )
        )
        policy.host_selection_retry_max_attempts = 3
        if _fails_over(model, version):  # (else no priority 1: the plugin would cost each request ~2,000
            # instructions for nothing, docs/native.md)
            policy.retry_priority.name = _PREVIOUS_PRIORITIES
            policy.retry_priority.typed_config.CopyFrom(pack(PreviousPrioritiesConfig(update_frequency=1)))
    if any(knative_host(v) for v in model.versions):  # Knative's gateway routes by Host (_clusters)
        action.auto_host_rewrite.value = True
    if face.protocol == "v2-grpc":
        action.max_stream_duration.grpc_timeout_header_max.CopyFrom(duration(model.timeout))
    return action


def _fails_over(model: Model, version: str) -> bool:
    """Whether the cluster of `version` (empty: the weighted clusters) has a priority 1 (`_health`)."""
    found = model.version(version) if version else None
    if found is None:
        return len([v for v in model.versions if v.weight]) > 1
    return bool(fallback_versions(model, found))


def _canary(model: Model, face: Face) -> rc.RouteAction:
    weighted = [(v.name, v.weight) for v in model.versions if v.weight]
    if len(weighted) == 1:
        only = weighted[0][0]
        action = _action(model, face, cluster=_names.cluster(model.name, only, face.suffix), version=only)
    else:
        action = _action(model, face)
        for name, weight in weighted:
            cluster = action.weighted_clusters.clusters.add(
                name=_names.cluster(model.name, name, face.suffix), weight=u32(weight)
            )
            served = _served_name(model, name)
            if served is not None:  # Envoy picks the weighted cluster with the route: its own name
                cluster.typed_per_filter_config[SERVED_NAME_FILTER].CopyFrom(pack(served))
    if model.shadow is not None:
        mirror = rc.RouteAction.RequestMirrorPolicy(
            cluster=_names.cluster(model.name, model.shadow.version, face.suffix),
            runtime_fraction=base_pb2.RuntimeFractionalPercent(
                default_value=percent_pb2.FractionalPercent(
                    numerator=round(model.shadow.percent * 10_000), denominator=_MILLION
                ),
                runtime_key=f"meshgate.shadow.{model.name}",
            ),
        )
        shadow = model.version(model.shadow.version)
        host = knative_host(shadow) if shadow is not None else None
        if host:  # Envoy would send the mirror to `<host>-shadow`, which Knative's gateway does not route
            mirror.host_rewrite_literal = host
            mirror.disable_shadow_host_suffix_append = True
        action.request_mirror_policies.append(mirror)
    return action
