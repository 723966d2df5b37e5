"""The policy's quotas as Envoy rate_limits, in the shape meshgate ratelimit expects (docs/ratelimit.md).

Per quota: quota=<name>, then the identity headers extauthz sets, in the order tenant, user, model.
A `requests` quota is one rate limit; a `tokens` quota is a check at request time (hits_addend = the
tokens extauthz asked for) and a charge at stream end (hits_addend = the tokens the backend reported
it used, read from the response by the `_usage` filters) and, at stream end too, the estimate charge:
the same entries, `meshgate.refused=<quotas|none>` (a 429's refusing quotas, as meshgate ratelimit
names them in its answer's metadata) and `meshgate.used=<reported|none>` (the `_usage` filters' string
flag), both metadata actions with the default `none`, hits_addend = the tokens extauthz asked for.
When the backend reported usage, the rate limiter counts the first and ignores the second; when it
did not (Envoy drops the first, its hits_addend empty) and the request was not refused, it charges
the second: the admission estimate (contract.USED_KEY). They go on each route of the models the
quota's `models` patterns select (RateLimitPerRoute.rate_limits: on the route Envoy 1.40 keeps
hits_addend, in RouteAction.rate_limits it does not). A quota the gateway enforces natively
(`gateway.enforcement: native | auto`, `_native_quotas`) is left out: Envoy counts it itself.

Every OpenAI model's routes also send, at stream end, the chargeback descriptors
`meshgate.usage=<kind>, tenant, model` (kind: requests, prompt_tokens, completion_tokens), whose
hits_addend is that number of the response's usage (docs/llm.md).

When the gateway traces (MESHGATE_XDS_TRACING), a route with a stream-end call also sends there the
descriptor `meshgate.traceparent=<traceparent>`: the request's trace context, which Envoy 1.40 does not
give that call (the rate limiter puts the call's span in the request's trace and counts nothing for it).
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.type.metadata.v3 import metadata_pb2

from meshgate import contract
from meshgate.contract import reads_usage
from meshgate.policy.model import Model, Policy, Quota

from ._native_quotas import native_quotas

__all__ = ["model_rate_limits"]

_A = rc.RateLimit.Action


def _header(key: str) -> rc.RateLimit.Action:
    header = contract.IDENTITY_HEADERS[key]
    return _A(request_headers=_A.RequestHeaders(header_name=header, descriptor_key=key))


def _generic(key: str, value: str) -> rc.RateLimit.Action:
    return _A(generic_key=_A.GenericKey(descriptor_key=key, descriptor_value=value))


def _actions(quota: Quota) -> list[rc.RateLimit.Action]:
    identity = [_header(key) for key in contract.descriptor_keys(quota)]
    return [_generic(contract.QUOTA_KEY, quota.name), *identity]


def _flag(descriptor_key: str, namespace: str, key: str) -> rc.RateLimit.Action:
    """`<descriptor_key>` = the string metadata `<namespace>:<key>`, or `none` when it is absent."""
    path = [metadata_pb2.MetadataKey.PathSegment(key=key)]
    metadata_key = metadata_pb2.MetadataKey(key=namespace, path=path)
    meta = _A.MetaData(descriptor_key=descriptor_key, metadata_key=metadata_key, source=_A.MetaData.DYNAMIC,
                       default_value=contract.USAGE_UNREPORTED)  # fmt: skip
    return _A(metadata=meta)


def _estimate_flags() -> list[rc.RateLimit.Action]:
    """The estimate charge's last entries: `meshgate.refused` = the quotas that refused the request (the
    rate limit filter's metadata of meshgate ratelimit's 429) or `none`; `meshgate.used` = the `_usage`
    filters' flag (`reported`) or `none`."""
    return [
        _flag(contract.REFUSED_ENTRY, contract.RATELIMIT_NAMESPACE, contract.REFUSED_KEY),
        _flag(contract.USED_KEY, contract.USAGE_NAMESPACE, contract.REPORTED_KEY),
    ]


def _limit(actions: list[rc.RateLimit.Action], hits: str, *, on_done: bool) -> rc.RateLimit:
    limit = rc.RateLimit(actions=actions, hits_addend=rc.RateLimit.HitsAddend(format=hits))
    if on_done:
        limit.apply_on_stream_done = True
    return limit


def _chargeback() -> list[rc.RateLimit]:
    return [
        _limit(
            [_generic(contract.USAGE_KEY, kind), _header("tenant"), _header("model")],
            contract.metadata(contract.USAGE_NAMESPACE, kind),
            on_done=True,
        )
        for kind in contract.USAGE_KINDS
    ]


def _trace() -> rc.RateLimit:
    """The stream-end descriptor carrying the request's traceparent (Envoy's tracer set the header: the
    router's upstream span); no descriptor when the header is absent."""
    header = _A.RequestHeaders(header_name=contract.TRACEPARENT_HEADER, descriptor_key=contract.TRACE_KEY)
    return rc.RateLimit(actions=[_A(request_headers=header)], apply_on_stream_done=True)


def model_rate_limits(
    policy: Policy, model: Model, *, traced: bool = False
) -> rate_limit_pb2.RateLimitPerRoute | None:
    """The per-route rate limits of `model`'s routes, or None when none applies to it. `traced`: the
    gateway traces, so a stream-end call carries the request's trace context (`_trace`)."""
    limits: list[rc.RateLimit] = []
    native = native_quotas(policy)
    asked = contract.asked_tokens(policy.gateway.ext_authz.transport)
    for quota in contract.quota_plan(policy).quotas_of(policy, model.name):
        if quota.name in native:
            continue
        admitted = contract.admitted_in_check(policy, quota, model, native)  # in the Check (admission.py)
        if quota.unit == "tokens":
            check = [*_actions(quota), _generic(contract.PHASE_KEY, contract.CHECK)]
            charge = [*_actions(quota), _generic(contract.PHASE_KEY, contract.CHARGE)]
            if not admitted:
                limits.append(_limit(check, asked, on_done=False))
            limits.append(_limit(charge, contract.USED_TOKENS, on_done=True))
            limits.append(_limit([*charge, *_estimate_flags()], asked, on_done=True))
        elif not admitted:
            limits.append(rc.RateLimit(actions=_actions(quota)))
    if reads_usage(model):
        limits += _chargeback()
    if traced and any(limit.apply_on_stream_done for limit in limits):
        limits.append(_trace())
    return rate_limit_pb2.RateLimitPerRoute(rate_limits=limits) if limits else None
