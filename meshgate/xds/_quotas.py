"""The policy's quotas as Envoy rate_limits, in the shape meshgate ratelimit expects (docs/ratelimit.md).

Per quota: quota=<name>, then the identity headers extauthz sets, in the order tenant, user, model.
A `requests` quota is one rate limit; a `tokens` quota is a check at request time (hits_addend = the
tokens extauthz asked for) and a charge at stream end (hits_addend = the tokens used). They go on each
route of the models the quota's `models` patterns select (RateLimitPerRoute.rate_limits: on the route
Envoy 1.40 keeps hits_addend, in RouteAction.rate_limits it does not).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.header_to_metadata.v3 import header_to_metadata_pb2 as h2m
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshgate.policy.model import Model, Policy, Quota

from ._pb import pack

__all__ = [
    "ASKED_TOKENS",
    "USAGE_HEADER",
    "USED_TOKENS",
    "model_rate_limits",
    "usage_filter",
    "uses_tokens",
]

USAGE_HEADER = "x-meshgate-usage-tokens"
USAGE_NAMESPACE = "meshgate.usage"
ASKED_TOKENS = "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:meshgate:tokens)%"
USED_TOKENS = f"%DYNAMIC_METADATA({USAGE_NAMESPACE}:tokens)%"
PHASE_KEY = "meshgate.phase"
_HEADERS = (("tenant", "x-meshgate-tenant"), ("user", "x-meshgate-user"), ("model", "x-meshgate-model"))
_A = rc.RateLimit.Action


def _applies(quota: Quota, model: Model) -> bool:
    return any(fnmatchcase(model.name, pattern) for pattern in quota.models)


def _actions(quota: Quota) -> list[rc.RateLimit.Action]:
    actions = [_A(generic_key=_A.GenericKey(descriptor_key="quota", descriptor_value=quota.name))]
    actions += [
        _A(request_headers=_A.RequestHeaders(header_name=header, descriptor_key=key))
        for key, header in _HEADERS
        if key in quota.per
    ]
    return actions


def _phase(quota: Quota, phase: str, tokens: str, *, on_done: bool) -> rc.RateLimit:
    limit = rc.RateLimit(
        actions=[
            *_actions(quota),
            _A(generic_key=_A.GenericKey(descriptor_key=PHASE_KEY, descriptor_value=phase)),
        ],
        hits_addend=rc.RateLimit.HitsAddend(format=tokens),
    )
    if on_done:
        limit.apply_on_stream_done = True
    return limit


def model_rate_limits(policy: Policy, model: Model) -> rate_limit_pb2.RateLimitPerRoute | None:
    """The per-route rate limits of `model`'s routes, or None when no quota applies to it."""
    limits: list[rc.RateLimit] = []
    for quota in policy.quotas:
        if not _applies(quota, model):
            continue
        if quota.unit == "tokens":
            limits.append(_phase(quota, "check", ASKED_TOKENS, on_done=False))
            limits.append(_phase(quota, "charge", USED_TOKENS, on_done=True))
        else:
            limits.append(rc.RateLimit(actions=_actions(quota)))
    return rate_limit_pb2.RateLimitPerRoute(rate_limits=limits) if limits else None


def uses_tokens(policy: Policy) -> bool:
    return any(q.unit == "tokens" for q in policy.quotas)


def usage_filter() -> hcm_pb2.HttpFilter:
    """Copies the upstream's token usage header into metadata, where the stream-end charge reads it."""
    config = h2m.Config(
        response_rules=[
            h2m.Config.Rule(
                header=USAGE_HEADER,
                on_header_present=h2m.Config.KeyValuePair(
                    metadata_namespace=USAGE_NAMESPACE, key="tokens", type=h2m.Config.NUMBER
                ),
            )
        ]
    )
    return hcm_pb2.HttpFilter(name="envoy.filters.http.header_to_metadata", typed_config=pack(config))
