"""Names and rules that several compilers and services must agree on: one rule, one place.

Every compiler of the policy (xds for meshgate's own gateway, meshconfig for Istio and Envoy Gateway,
ratelimit's descriptor tree) and every service (extauthz, ratelimit) imports them from here; none keeps
a copy. What lives here: the headers the gateway sets (and no client may send), the rate limit
descriptor keys and their order, the token phase key, the tier arithmetic, which models a quota counts
(computed once per policy), and the LLM usage metadata names below.

LLM token accounting (docs/llm.md) crosses three rooms. extauthz puts the tokens a request *asks*
for in its dynamic metadata; xds configures Envoy to copy the tokens a response *used* (the backend's
OpenAI `usage` object, in the JSON body or the last SSE event) into dynamic metadata and to send both
to the rate limiter in descriptors; ratelimit recognises the reserved descriptor entries. Every name
those steps share lives here, and each side imports it from here.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping
from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshgate.policy.model import Model, Policy, Quota

__all__ = [
    "ASKED_TOKENS",
    "ASKED_TOKENS_HTTP",
    "ASKED_TOKENS_KEY",
    "CHARGE",
    "CHECK",
    "COMPLETION_TOKENS",
    "DECISION_ID_HEADER",
    "DESCRIPTOR_KEYS",
    "EXTAUTHZ_METADATA",
    "EXTAUTHZ_NAMESPACE",
    "GATEWAY_HEADERS",
    "HEADER_PREFIX",
    "HTTP_METADATA_PREFIX",
    "IDENTITY_HEADERS",
    "MODEL_HEADER",
    "MODEL_LISTS",
    "NO_ROUTE_BODY",
    "OPENAI_PREFIXES",
    "PHASE_KEY",
    "PROMPT_TOKENS",
    "PUBLIC_PATHS",
    "QUOTA_HEADER",
    "QUOTA_KEY",
    "RATELIMIT_NAMESPACE",
    "REFUSED_ENTRY",
    "REFUSED_KEY",
    "REPORTED_KEY",
    "REQUESTS",
    "RESET_HEADER",
    "STREAM_HEADER",
    "STREAM_OPTIONS_HEADER",
    "TENANT_HEADER",
    "TIER_HEADER",
    "TOTAL_TOKENS",
    "TRACEPARENT_HEADER",
    "TRACE_KEY",
    "USAGE_FIELDS",
    "USAGE_KEY",
    "USAGE_KINDS",
    "USAGE_NAMESPACE",
    "USAGE_REPORTED",
    "USAGE_RULE",
    "USAGE_UNREPORTED",
    "USED_KEY",
    "USED_TOKENS",
    "USER_HEADER",
    "VERSION_HEADER",
    "QuotaPlan",
    "admitted_in_check",
    "asked_tokens",
    "descriptor_headers",
    "extauthz_admits",
    "metadata",
    "openai_429",
    "quota_limit",
    "quota_plan",
    "reads_usage",
    "request_entries",
    "rule_label",
    "tier_limit",
]

# --- headers the gateway sets ----------------------------------------------------------------------

HEADER_PREFIX = "x-meshgate-"
"""Every header below starts with it. None may come from a client: extauthz overwrites or removes the
client's copies on every request it allows, and the Istio and Envoy Gateway renderings also strip them
before routing (docs/meshconfig.md)."""
TENANT_HEADER = "x-meshgate-tenant"
USER_HEADER = "x-meshgate-user"
TIER_HEADER = "x-meshgate-tier"
MODEL_HEADER = "x-meshgate-model"
"""The model extauthz read from the path or the body; routes of body-named models (OpenAI, Triton gRPC)
match it after extauthz cleared the route cache."""
VERSION_HEADER = "x-meshgate-model-version"
DECISION_ID_HEADER = "x-meshgate-decision-id"
IDENTITY_HEADERS: Mapping[str, str] = {
    "tenant": TENANT_HEADER,
    "user": USER_HEADER,
    "tier": TIER_HEADER,
    "model": MODEL_HEADER,
}
"""Identity key -> the header extauthz sets on an allowed request."""

NO_ROUTE_BODY = '{"error":"no_route","message":"no model route matches this request"}'
"""The 404 body of every gateway's catch-all route: a request no model route matches, after ext_authz
ran on it (a body-routed request matches the catch-all first; ext_authz then names its model)."""

PUBLIC_PATHS: tuple[str, ...] = ()
"""Paths a gateway may serve without an ext_authz check. None: every request the gateway accepts is
checked (the gateways' own health checks listen on ports of their own: Istio 15021, Envoy Gateway
19003, meshgate's Envoy its admin port)."""


# --- descriptors the rate limiter reads -------------------------------------------------------------

QUOTA_KEY = "quota"
"""First entry of a quota's descriptor: `quota=<quota name>`."""
DESCRIPTOR_KEYS = ("tenant", "user", "model")
"""The identity entries that follow, in this order whatever the order of the quota's `per`; each value
is the header of that key in IDENTITY_HEADERS."""

PHASE_KEY = "meshgate.phase"
"""Reserved last entry of a token quota's descriptor: `check` (at request time: refuse if the asked
tokens would not fit, add nothing) or `charge` (at stream end: add the used tokens, never refuse)."""
CHECK, CHARGE = "check", "charge"

USED_KEY = "meshgate.used"
"""Reserved last entry (after the phase) of a token quota's second stream-end charge, the estimate
charge, whose hits_addend is the tokens extauthz asked for (ASKED_TOKENS). Its value is read from
`meshgate.usage:<REPORTED_KEY>`: USAGE_REPORTED when the backend reported its usage (the first charge,
hits_addend = USED_TOKENS, counts it; this one counts nothing), Envoy's default USAGE_UNREPORTED when it
did not (a stream without usage, a JSON answer too large to read): the rate limiter then charges the
estimate (docs/llm.md, "Unreported usage"). Envoy's metadata action reads string values only, hence a
flag and not the number itself."""
USAGE_REPORTED, USAGE_UNREPORTED = "reported", "none"
REFUSED_ENTRY = "meshgate.refused"
"""Reserved entry before USED_KEY in the estimate charge: the quotas that refused the request (the rate
limit filter's REFUSED_KEY metadata), or Envoy's default USAGE_UNREPORTED (`none`) when none did. Envoy
1.40 sends the stream-end descriptors of a request its rate limit refused (a 429 that no backend
answered) too: such an estimate charge counts nothing."""

USAGE_KEY = "meshgate.usage"
"""Reserved first entry of a chargeback descriptor, `meshgate.usage=<kind>, tenant=<t>, model=<m>`,
sent at stream end: counted per (kind, tenant, model) for the names the policy declares, never limited."""
USAGE_RULE = "meshgate.usage"
"""Name of the (unlimited) rules the policy compiles for the declared chargeback descriptors."""

TRACE_KEY = "meshgate.traceparent"
"""Entry of the one-entry descriptor `meshgate.traceparent=<the request's traceparent>` that meshgate's
xds adds to the stream-end rate limit call when the gateway traces (Envoy 1.40 sends that call with no
trace context): the rate limiter continues that trace in the call's span and counts nothing for it."""
TRACEPARENT_HEADER = "traceparent"
"""The W3C trace context header Envoy's tracer sets on the request (the router's upstream span)."""


def reads_usage(model: Model) -> bool:
    """Whether the gateway reads `model`'s usage from its responses (OpenAI-compatible backends): xds
    sends its chargeback descriptors, ratelimit counts them."""
    return model.protocol == "openai"


def descriptor_keys(quota: Quota) -> tuple[str, ...]:
    """The identity entries of `quota`'s descriptor, in DESCRIPTOR_KEYS order (a quota's `models` never
    adds one: the descriptor goes only on the routes of the models it counts)."""
    return tuple(key for key in DESCRIPTOR_KEYS if key in quota.per)


def descriptor_headers(quota: Quota) -> tuple[tuple[str, str], ...]:
    """(descriptor key, header) of each identity entry of `quota`'s descriptor."""
    return tuple((key, IDENTITY_HEADERS[key]) for key in descriptor_keys(quota))


def extauthz_admits(policy: Policy) -> bool:
    """Whether extauthz's Check decides quotas at admission (gateway.ratelimit.admission), in place of
    the rate limit filter's request-time descriptors (`admitted_in_check` says which)."""
    return policy.gateway.ratelimit.admission == "extauthz" and policy.gateway.enforcement != "native"


def admitted_in_check(policy: Policy, quota: Quota, model: Model, native: Container[str]) -> bool:
    """Whether extauthz's Check decides `quota` at request time on `model`'s routes: with `admission:
    extauthz`, a token quota's check, and a `requests` quota of an OpenAI model that Envoy does not
    enforce itself (`native`: the names of the quotas it does, `auto`). An OpenAI request always reaches
    the Check (its model is in its body: `ext_authz` and `auto` alike). Elsewhere the rate limit filter
    keeps it: a KServe/Triton request may be decided natively in `auto`, and such a model has routes
    that answer after the Check (413 for a body over its limit, a refused stream) where the filter
    counts nothing."""
    if not extauthz_admits(policy):
        return False
    return quota.unit == "tokens" or (model.protocol == "openai" and quota.name not in native)


def request_entries(quota: Quota, identity: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The entries of a quota's request-time descriptor, as the gateway's rate limit actions build it
    from the identity headers (meshgate/xds/_quotas.py) and as extauthz builds it when it decides the
    admission itself (meshgate/ratelimit/admission.py): the quota, its identity entries with the values
    extauthz sets (`identity`: descriptor key -> value), and for a token quota the check phase."""
    entries = [(key, identity[key]) for key in descriptor_keys(quota)]
    phase = ((PHASE_KEY, CHECK),) if quota.unit == "tokens" else ()
    return ((QUOTA_KEY, quota.name), *entries, *phase)


def rule_label(quota: str, keys: tuple[str, ...], tenant: str | None) -> str:
    """The config path of a quota's rule, envoyproxy/ratelimit's `key_value.key` style, used as its
    metric label: `quota_<name>.tenant_<tenant>.user`. Built part by part: a dot in a quota or tenant
    name stays in its own part."""
    parts = [f"{QUOTA_KEY}_{quota}"]
    for key in keys:
        parts.append(f"{key}_{tenant}" if key == "tenant" and tenant is not None else key)
    return ".".join(parts)


# --- tier arithmetic -------------------------------------------------------------------------------


def tier_limit(limit: int, multiplier: float) -> int:
    """`limit` times a tier's `multiplier`, rounded down, at least 1. Exact: the multiplier is taken as
    the decimal it was written as (0.29 x 100 is 29, not the 28.999... of binary floating point)."""
    return max(1, math.floor(Decimal(limit) * Decimal(repr(float(multiplier)))))


def quota_limit(policy: Policy, quota: Quota, tenant: str | None) -> int:
    """The limit of `quota` for `tenant` (its tier's multiplier applied); the quota's own limit when it
    is counted without a tenant (its `per` has no tenant) or the tenant has no tier."""
    if tenant is None:
        return quota.limit
    found = policy.tenant(tenant)
    tier = policy.tier(found.tier) if found is not None and found.tier else None
    return tier_limit(quota.limit, tier.multiplier) if tier is not None else quota.limit


# --- which models a quota counts -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuotaPlan:
    """The policy's quota `models` patterns matched against its model names, once."""

    models: Mapping[str, tuple[str, ...]]
    """Quota name -> the names of the policy's models it counts, sorted."""
    every_model: frozenset[str]
    """Quotas whose patterns are the default `*` (they count requests of any model)."""

    def applies(self, quota: Quota, model: str) -> bool:
        return model in self.models[quota.name]

    def quotas_of(self, policy: Policy, model: str) -> tuple[Quota, ...]:
        """The policy's quotas counting `model`, in policy order."""
        return tuple(q for q in policy.quotas if model in self.models[q.name])


class _Identity:
    """A policy as a cache key by identity (policies hold mappings and are not hashable)."""

    __slots__ = ("policy",)

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __hash__(self) -> int:
        return id(self.policy)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.policy is self.policy


def quota_plan(policy: Policy) -> QuotaPlan:
    """The QuotaPlan of `policy`, computed once per policy object (the last few are kept)."""
    return _plan(_Identity(policy))


@lru_cache(maxsize=8)
def _plan(key: _Identity) -> QuotaPlan:
    policy = key.policy
    names = [m.name for m in policy.models]
    models = {
        q.name: tuple(sorted(n for n in names if any(fnmatchcase(n, p) for p in q.models)))
        for q in policy.quotas
    }
    every = frozenset(q.name for q in policy.quotas if q.models == ("*",))
    return QuotaPlan(models=models, every_model=every)


# --- dynamic metadata ------------------------------------------------------------------------------

EXTAUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
"""Envoy's ext_authz filter stores the metadata meshgate extauthz returns under its own name."""
EXTAUTHZ_METADATA = "meshgate"
"""The struct meshgate extauthz returns in `dynamic_metadata` (tenant, user, tier, model, tokens)."""
ASKED_TOKENS_KEY = "tokens"
"""Its key for the tokens a request asks for (prompt estimate + max_tokens, or the context limit)."""

USAGE_NAMESPACE = "meshgate.usage"
"""Where Envoy writes what the backend reported it used (one number per key below)."""
TOTAL_TOKENS = "tokens"
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
REQUESTS = "requests"  # 1 once a response reported usage: the requests a tenant is charged for
REPORTED_KEY = "reported"  # the string USAGE_REPORTED once a response reported usage (for USED_KEY)
USAGE_FIELDS = {
    TOTAL_TOKENS: "total_tokens",
    PROMPT_TOKENS: "prompt_tokens",
    COMPLETION_TOKENS: "completion_tokens",
}
"""Metadata key -> field of the OpenAI `usage` object it is read from (vLLM, TGI, llama.cpp, KServe)."""
USAGE_KINDS = (REQUESTS, PROMPT_TOKENS, COMPLETION_TOKENS)
"""The chargeback counters, by the metadata key that feeds each (also the value of the USAGE_KEY entry)."""


def metadata(namespace: str, *path: str) -> str:
    """Envoy's formatter for one dynamic metadata value: `%DYNAMIC_METADATA(ns:key:...)%`."""
    return f"%DYNAMIC_METADATA({':'.join((namespace, *path))})%"


ASKED_TOKENS = metadata(EXTAUTHZ_NAMESPACE, EXTAUTHZ_METADATA, ASKED_TOKENS_KEY)
"""The tokens a request asks for, as Envoy's formatter reads them after ext_authz (over gRPC)."""
HTTP_METADATA_PREFIX = "x-meshgate-md-"
"""ext_authz over HTTP (gateway.ext_authz.transport: http): each value of the EXTAUTHZ_METADATA struct is
an answer header of this prefix + its key, which Envoy stores, as a string, under EXTAUTHZ_NAMESPACE
with the header's name as the key (`dynamic_metadata_from_headers`). Never sent upstream."""
ASKED_TOKENS_HTTP = metadata(EXTAUTHZ_NAMESPACE, HTTP_METADATA_PREFIX + ASKED_TOKENS_KEY)
"""ASKED_TOKENS when ext_authz answers over HTTP."""


def asked_tokens(transport: str) -> str:
    """The formatter of the tokens a request asks for, after ext_authz over `transport` (grpc, http)."""
    return ASKED_TOKENS_HTTP if transport == "http" else ASKED_TOKENS
USED_TOKENS = metadata(USAGE_NAMESPACE, TOTAL_TOKENS)
"""The tokens the response used, as the backend reported them."""

# --- headers ---------------------------------------------------------------------------------------

STREAM_HEADER = "x-meshgate-stream"
"""Set by the gateway from the request body's `stream` (`true` when streaming), overwriting any copy
the client sent; the gateway then asks the backend for usage in the stream (docs/llm.md)."""

STREAM_OPTIONS_HEADER = "x-meshgate-stream-options"
"""Set by meshgate's own gateway from the request body's `stream_options` (compact JSON), read by its
usage-chunk filter and removed before the request goes upstream (docs/llm.md); no other target uses it."""

QUOTA_HEADER = "x-meshgate-quota"
"""Response header of the 429 of a quota meshgate's own gateway enforces natively (Envoy's local rate
limit, docs/native.md): the quota's name, which the gateway's local reply puts in OpenAI's body."""

GATEWAY_HEADERS = (
    TENANT_HEADER,
    USER_HEADER,
    TIER_HEADER,
    MODEL_HEADER,
    VERSION_HEADER,
    DECISION_ID_HEADER,
    STREAM_HEADER,
)
"""Every header meshgate or its gateway filters set: where a gateway can only remove headers by name
(Envoy Gateway's earlyRequestHeaders), these are the names removed from what the client sent."""


# --- OpenAI's API at the gateway -------------------------------------------------------------------

OPENAI_PREFIXES = ("/v1/", "/openai/v1/")
"""Where OpenAI's API lives: vLLM, TGI, llama.cpp at /v1/, KServe's Hugging Face runtime at /openai/v1/.
Every error the gateway or extauthz gives under them is in OpenAI's shape (docs/llm.md)."""
MODEL_LISTS = tuple(prefix + "models" for prefix in OPENAI_PREFIXES)
"""OpenAI's model list paths (and, under each, `/{model}`): answered by extauthz itself."""
RESET_HEADER = "x-ratelimit-reset"
"""meshgate ratelimit's X-RateLimit-Reset (seconds to the window's end): an OpenAI 429's Retry-After."""


def openai_429(quotas: str, reset: str) -> dict[str, object]:
    """The body of the gateway's OpenAI 429: `quotas` (the names that refused) and `reset` (the seconds
    to wait) are values (extauthz's admission) or Envoy formatters (the local replies of meshgate's
    gateway and of the Istio rendering)."""
    return {"error": {
        "message": f"Rate limit reached for quota {quotas}; retry after {reset} s",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
        "quota": quotas,
    }}  # fmt: skip


RATELIMIT_NAMESPACE = "envoy.filters.http.ratelimit"
"""Envoy's rate limit filter stores the `dynamic_metadata` of the rate limit service's answer under its
own name, before it sends the 429 (so the local reply's formatter reads it)."""
REFUSED_KEY = "refused"
"""Key of meshgate ratelimit's `dynamic_metadata` on an OVER_LIMIT answer: the names of the quotas that
refused the request (over their limit), comma-separated in descriptor order; the gateway's 429 names them."""
