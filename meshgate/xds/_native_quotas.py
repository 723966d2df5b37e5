"""Request quotas enforced by Envoy itself: local rate limits that meshgate sizes per gateway.

With `gateway.enforcement: native` or `auto`, every quota Envoy can enforce alone (`native_quota_gaps`
lists the others, which stay on meshgate ratelimit in `auto`) becomes token buckets of Envoy's
local_ratelimit filter (docs/native.md, "Quotas"):

- one local rate limit filter per quota, `meshgate.quota.<name>`, in policy order right before the
  router, so after every filter that sets the identity headers; a quota in shadow mode is counted and
  never enforced;
- their config on the listener (`native_quota_configs`): one set of buckets for every route of the
  gateway, so a quota counts a user once whatever route (version, face, A/B) a request takes, and a new
  route configuration (a policy's, or the fast routes' periodic refresh: `_fast`) keeps the buckets;
- request descriptors from the filter's own `rate_limits` actions, the same entries as meshgate
  ratelimit's (quota=<name>, tenant, user, model from the identity headers, contract.descriptor_keys),
  plus `meshgate.models=selected` when the request names a model the quota counts;
- one configured descriptor per tenant listing the quota (its limit times its tier's multiplier,
  contract.quota_limit), or one for a quota not counted per tenant, with user and model as wildcards:
  Envoy makes a bucket per value it sees (at most MAX_DYNAMIC per descriptor, least recently used
  first out);
- each bucket holds `limit` tokens and refills `limit` per window; `local_cluster_rate_limit` makes each
  request cost N tokens on a gateway that sees N gateways in its local cluster (`_gateways`), so the
  gateways together admit about `limit` per window (the bound and its causes: docs/native.md).
"""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as lrl_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from google.protobuf import wrappers_pb2  # type: ignore[import-untyped]

from meshgate import contract
from meshgate.policy._fields import UINT32_MAX
from meshgate.policy.errors import Path
from meshgate.policy.model import Policy, Quota
from meshgate.ratelimit.model import UNIT_SECONDS

from ._pb import duration, pack, u32

__all__ = [
    "LOCAL_REFUSAL",
    "MAX_DYNAMIC",
    "MODELS_KEY",
    "QUOTA_HEADER",
    "native_quota_configs",
    "native_quota_filters",
    "native_quota_gaps",
    "native_quotas",
    "native_refusal",
    "quota_filter",
]

MODELS_KEY, SELECTED = "meshgate.models", "selected"
"""Second entry of a native quota's descriptor: present when the request names a model the quota counts
(a header_value_match action on the model header)."""
QUOTA_HEADER = contract.QUOTA_HEADER
"""Response header of a native quota's 429: the quota's name (the OpenAI body names it from there, as
meshgate ratelimit's 429 names it in its RateLimit-Policy header and body)."""
MAX_DYNAMIC = 10_000
"""Buckets Envoy keeps per configured descriptor (users, or user x model, of one tenant and quota)."""
_ALL = percent_pb2.FractionalPercent(numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED)
_NONE = percent_pb2.FractionalPercent(numerator=0, denominator=percent_pb2.FractionalPercent.HUNDRED)
_RESET_HEADERS = {"x-ratelimit": ("x-ratelimit-remaining", "x-ratelimit-reset"),
                  "draft-03": ("ratelimit-remaining", "ratelimit-reset")}  # fmt: skip
_A = rc.RateLimit.Action
LOCAL_REFUSAL = "local_rate_limited"
"""The response code details (and body) of Envoy's local rate limit 429. It sets the RL response flag
only after its local reply, so a local reply mapper cannot match that flag (meshgate ratelimit's 429
has it)."""


def quota_filter(quota: str) -> str:
    """The name of the filter enforcing native quota `quota`."""
    return f"meshgate.quota.{quota}"


# --- what can be native -----------------------------------------------------------------------------


def _quota_gaps(policy: Policy, index: int, quota: Quota) -> Iterator[tuple[Path, str]]:
    def at(field: str) -> Path:
        return ("quotas", index, field)

    if quota.unit != "requests":
        yield (
            at("unit"),
            (
                "a tokens quota is charged at stream end with what the backend used; Envoy's local rate "
                "limit counts requests when they arrive"
            ),
        )
    if quota.algorithm != "fixed_window":
        yield (
            at("algorithm"),
            (
                "Envoy's local rate limit is a token bucket that refills continuously: it can hold a "
                "fixed window's average, not a sliding window's bound"
            ),
        )


def native_quota_gaps(policy: Policy) -> list[tuple[Path, str]]:
    """(field path, reason) of every quota setting Envoy cannot enforce alone: with `enforcement:
    native` each is an error, with `auto` its quota stays on meshgate ratelimit."""
    return [gap for i, quota in enumerate(policy.quotas) for gap in _quota_gaps(policy, i, quota)]


def native_quotas(policy: Policy) -> frozenset[str]:
    """Names of the quotas the gateway enforces natively (none with `enforcement: ext_authz`)."""
    if policy.gateway.enforcement == "ext_authz":
        return frozenset()
    return frozenset(
        q.name for i, q in enumerate(policy.quotas) if next(_quota_gaps(policy, i, q), None) is None
    )


def _shadow(policy: Policy, quota: Quota) -> bool:
    return quota.shadow_mode or policy.gateway.ratelimit.shadow_mode


def _enforced(policy: Policy) -> list[Quota]:
    """The native quotas, in policy order (a quota counting no model has nothing to enforce)."""
    plan = contract.quota_plan(policy)
    native = native_quotas(policy)
    return [q for q in policy.quotas if q.name in native and plan.models[q.name]]


def native_refusal() -> accesslog_pb2.AccessLogFilter:
    """A local reply mapper's filter matching the 429 of a native quota."""
    expression = f"response.code_details == '{LOCAL_REFUSAL}'"
    cel = pack(cel_pb2.ExpressionFilter(expression=expression))
    extension = accesslog_pb2.ExtensionFilter(
        name="envoy.access_loggers.extension_filters.cel", typed_config=cel
    )
    return accesslog_pb2.AccessLogFilter(extension_filter=extension)


# --- the filters ------------------------------------------------------------------------------------


def native_quota_filters(policy: Policy) -> list[hcm_pb2.HttpFilter]:
    """The listener's local rate limit filters (to go right before the router), each with its buckets."""
    return [
        hcm_pb2.HttpFilter(name=name, typed_config=pack(config))
        for name, config in native_quota_configs(policy).items()
    ]


def native_quota_configs(policy: Policy) -> dict[str, lrl_pb2.LocalRateLimit]:
    """Filter name -> its config (on the listener)."""
    return {quota_filter(q.name): _config(policy, q) for q in _enforced(policy)}


def _stat_prefix(name: str) -> str:
    """`meshgate.quota.<name>` -> `meshgate_quota_<name>` (Envoy's stats: a dot starts a new level)."""
    return name.replace(".", "_")


def _config(policy: Policy, quota: Quota) -> lrl_pb2.LocalRateLimit:
    shadow = _shadow(policy, quota)
    config = lrl_pb2.LocalRateLimit(
        stat_prefix=_stat_prefix(quota_filter(quota.name)),
        # a request no quota counts takes a token from this bucket, which never runs dry
        token_bucket=token_bucket_pb2.TokenBucket(
            max_tokens=UINT32_MAX, tokens_per_fill=u32(UINT32_MAX), fill_interval=duration(1)
        ),
        always_consume_default_token_bucket=wrappers_pb2.BoolValue(value=False),
        filter_enabled=base_pb2.RuntimeFractionalPercent(default_value=_ALL),
        filter_enforced=base_pb2.RuntimeFractionalPercent(default_value=_NONE if shadow else _ALL),
        local_cluster_rate_limit=common_pb2.LocalClusterRateLimit(),
        max_dynamic_descriptors=u32(MAX_DYNAMIC),
        rate_limits=list(_rate_limits(policy, quota)),
        descriptors=list(_descriptors(policy, quota)),
    )
    if not shadow:
        config.response_headers_to_add.extend(_refusal_headers(policy, quota))
    return config


def _refusal_headers(policy: Policy, quota: Quota) -> list[base_pb2.HeaderValueOption]:
    """The headers of a native 429: what Envoy's rate limit filter adds to meshgate ratelimit's
    (x-envoy-ratelimited), the quota's name, and remaining 0 with the reset in meshgate's header
    style: the window's seconds, by when an unused bucket is full again (docs/native.md)."""
    headers = [("x-envoy-ratelimited", "true"), (QUOTA_HEADER, quota.name)]
    style = policy.gateway.ratelimit.response_headers
    if style in _RESET_HEADERS:
        remaining, reset = _RESET_HEADERS[style]
        headers += [(remaining, "0"), (reset, str(UNIT_SECONDS[quota.window]))]
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, value=value),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for key, value in headers
    ]


# --- descriptors ------------------------------------------------------------------------------------


def _model_matchers(policy: Policy, quota: Quota) -> list[rc.HeaderMatcher]:
    """One matcher per way a request counts: any model for a quota of every model, else one per model
    it selects (one rate limit each: Envoy's header_value_match has no OR, and a regex of many names
    would pass RE2's program size limit). A request naming no model (a server-level call) counts for
    none, as on meshgate ratelimit, whose descriptors only the models' routes send."""
    if quota.name in contract.quota_plan(policy).every_model:
        return [rc.HeaderMatcher(name=contract.MODEL_HEADER, present_match=True)]
    return [
        rc.HeaderMatcher(name=contract.MODEL_HEADER, string_match=string_pb2.StringMatcher(exact=model))
        for model in contract.quota_plan(policy).models[quota.name]
    ]


def _rate_limits(policy: Policy, quota: Quota) -> Iterator[rc.RateLimit]:
    """The request descriptors of `quota`: quota=<name>, meshgate.models=selected, then the identity
    entries, from the same headers as meshgate ratelimit's."""
    name = _A(generic_key=_A.GenericKey(descriptor_key=contract.QUOTA_KEY, descriptor_value=quota.name))
    identity = [
        _A(request_headers=_A.RequestHeaders(header_name=header, descriptor_key=key))
        for key, header in contract.descriptor_headers(quota)
    ]
    for matcher in _model_matchers(policy, quota):
        selected = _A.HeaderValueMatch(
            descriptor_key=MODELS_KEY, descriptor_value=SELECTED, headers=[matcher]
        )
        yield rc.RateLimit(actions=[name, _A(header_value_match=selected), *identity])


def _descriptors(policy: Policy, quota: Quota) -> Iterator[common_pb2.LocalRateLimitDescriptor]:
    keys = contract.descriptor_keys(quota)
    tenants = [t.name for t in policy.tenants if quota.name in t.quotas] if "tenant" in keys else [None]
    seconds = UNIT_SECONDS[quota.window]
    for tenant in tenants:
        limit = contract.quota_limit(policy, quota, tenant)
        entries = [common_pb2.RateLimitDescriptor.Entry(key=contract.QUOTA_KEY, value=quota.name)]
        entries.append(common_pb2.RateLimitDescriptor.Entry(key=MODELS_KEY, value=SELECTED))
        for key in keys:  # an empty value: any value, one bucket per value Envoy sees
            value = tenant if key == "tenant" and tenant is not None else ""
            entries.append(common_pb2.RateLimitDescriptor.Entry(key=key, value=value))
        bucket = token_bucket_pb2.TokenBucket(
            max_tokens=limit, tokens_per_fill=u32(limit), fill_interval=duration(seconds)
        )
        yield common_pb2.LocalRateLimitDescriptor(entries=entries, token_bucket=bucket)
