"""Routes per model: KServe v2 REST by path, everything by the x-meshgate-model header.

Per model, A/B header routes come first (they pin a version), then the canary route
(weighted clusters) with the shadow mirror. Matches of different models never overlap.
Endpoint health moves traffic off versions with no routable endpoint (see `_health`).
"""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2

from meshgate.policy.model import Model, Policy

from . import _names
from ._health import EndpointHealthMap, canary_weights, routable_versions
from ._pb import duration, pack, u32
from ._quotas import model_rate_limits

__all__ = ["route_configuration"]

_MILLION = percent_pb2.FractionalPercent.MILLION
RATELIMIT_FILTER = "envoy.filters.http.ratelimit"


def route_configuration(
    policy: Policy, *, ratelimit: bool = True, health: EndpointHealthMap | None = None
) -> route_pb2.RouteConfiguration:
    routes = []
    for model in policy.models:
        limits = model_rate_limits(policy, model) if ratelimit else None
        for route in _model_routes(model, health or {}):
            if limits is not None:
                route.typed_per_filter_config[RATELIMIT_FILTER].CopyFrom(pack(limits))
            routes.append(route)
    return route_pb2.RouteConfiguration(
        name=_names.ROUTE_CONFIG,
        virtual_hosts=[rc.VirtualHost(name=_names.VIRTUAL_HOST, domains=["*"], routes=routes)],
    )


def _matches(model: Model) -> Iterator[rc.RouteMatch]:
    header = rc.HeaderMatcher(
        name=_names.MODEL_HEADER, string_match=string_pb2.StringMatcher(exact=model.name)
    )
    yield rc.RouteMatch(prefix="/", headers=[header])
    if model.protocol == "v2-rest":
        yield rc.RouteMatch(path_separated_prefix=f"/v2/models/{model.name}")


def _model_routes(model: Model, health: EndpointHealthMap) -> Iterator[rc.Route]:
    up = routable_versions(model, health)
    weights = canary_weights(model, health)
    fallback = any(name in up for name, _ in weights)  # somewhere healthy to move pinned traffic to
    for match in _matches(model):
        for ab in model.ab:
            pinned = rc.RouteMatch()
            pinned.CopyFrom(match)
            pinned.headers.append(
                rc.HeaderMatcher(name=ab.header, string_match=string_pb2.StringMatcher(exact=ab.value))
            )
            pinned_down = ab.version not in up and fallback
            yield rc.Route(
                name=f"{model.name}|ab|{ab.header}={ab.value}",
                match=pinned,
                route=(
                    _canary(model, weights, up)
                    if pinned_down
                    else _action(model, cluster=_names.cluster(model.name, ab.version))
                ),
            )
        yield rc.Route(name=f"{model.name}|canary", match=match, route=_canary(model, weights, up))


def _action(model: Model, *, cluster: str = "") -> rc.RouteAction:
    action = rc.RouteAction(timeout=duration(model.timeout))
    if cluster:
        action.cluster = cluster
    retries = model.retries
    if retries.attempts:
        policy = action.retry_policy
        policy.retry_on = ",".join(retries.retry_on)
        policy.num_retries.CopyFrom(u32(retries.attempts))
        if retries.per_try_timeout is not None:
            policy.per_try_timeout.CopyFrom(duration(retries.per_try_timeout))
    if model.protocol == "v2-grpc":
        action.max_stream_duration.grpc_timeout_header_max.CopyFrom(duration(model.timeout))
    return action


def _canary(model: Model, weighted: list[tuple[str, int]], up: frozenset[str]) -> rc.RouteAction:
    """Weighted clusters over `weighted` (one: a plain cluster), mirroring to a routable shadow."""
    if len(weighted) == 1:
        action = _action(model, cluster=_names.cluster(model.name, weighted[0][0]))
    else:
        action = _action(model)
        action.weighted_clusters.clusters.extend(
            rc.WeightedCluster.ClusterWeight(name=_names.cluster(model.name, name), weight=u32(weight))
            for name, weight in weighted
        )
    if model.shadow is not None and model.shadow.version in up:
        action.request_mirror_policies.append(
            rc.RouteAction.RequestMirrorPolicy(
                cluster=_names.cluster(model.name, model.shadow.version),
                runtime_fraction=base_pb2.RuntimeFractionalPercent(
                    default_value=percent_pb2.FractionalPercent(
                        numerator=round(model.shadow.percent * 10_000), denominator=_MILLION
                    ),
                    runtime_key=f"meshgate.shadow.{model.name}",
                ),
            )
        )
    return action
