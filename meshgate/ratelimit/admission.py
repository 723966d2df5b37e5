"""Quota admission inside extauthz's Check (`gateway.ratelimit.admission: extauthz`).

With two calls (the default, `ratelimit`), a request is checked by extauthz, then by the rate limit
filter, whose request-time descriptors count it against its `requests` quotas and test that the tokens
it asks fit its token quotas (`meshgate.phase=check`, docs/llm.md): two calls to meshgate before the
model gets the request. With `extauthz`, meshgate's gateway leaves out the request-time descriptors of
the quotas `contract.admitted_in_check` names (the token checks, and the `requests` quotas of OpenAI
models Envoy does not count itself; meshgate/xds/_quotas.py), and the Check decides them itself,
in the same process, with the same limiter and store, all in one request (all or nothing, as Envoy's
one call): the descriptors are the ones Envoy would have built (the quota, the identity entries
extauthz sets as headers, a token check's phase: `contract.request_entries`), so the counters, rules,
tiers, shadow mode, metrics and refusal log are the rate limiter's own. Stream-end charges stay with
the rate limit filter.

A refusal is answered as the gateway answers the rate limit filter's 429 (`refusal`): status 429,
`x-envoy-ratelimited: true`, the rate limit headers of `gateway.ratelimit.response_headers`, and under
OpenAI's paths the body and `Retry-After` of the gateway's local reply (meshgate/xds/_openai.py). An
admitted request gets the same rate limit headers on its answer, as the check descriptors' answer gave.
When the store cannot answer, `gateway.ratelimit.failure_mode_deny` decides: refuse (the Check is then
not decided: Envoy's ext_authz error answer, 403 unless `failure_mode_allow`) or admit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from meshgate import contract
from meshgate.policy.model import Policy, Quota

from .decision import Decision, Descriptor, Request
from .service import RateLimitServicer
from .store import StoreUnavailable

__all__ = ["Admission", "AdmissionPlan", "Refusal", "refusal_body"]

RATE_LIMITED_HEADER = ("x-envoy-ratelimited", "true")
"""What Envoy's rate limit filter adds to its 429 (unless disable_x_envoy_ratelimited_header)."""
REFUSAL_HEADERS = (RATE_LIMITED_HEADER[0], "retry-after")
"""The headers of a refusal beside the rate limit headers (and content-type)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request over a quota decided in the Check: what the Check answers (status 429)."""

    headers: tuple[tuple[str, str], ...]
    body: str


@dataclass(frozen=True, slots=True)
class AdmissionPlan:
    """Per model, the quotas extauthz decides at admission (empty: not this policy)."""

    domain: str
    quotas: Mapping[str, tuple[Quota, ...]]
    fail_open: bool

    @classmethod
    def of(cls, policy: Policy) -> AdmissionPlan:
        rl = policy.gateway.ratelimit
        if not contract.extauthz_admits(policy):
            return cls(rl.domain, {}, not rl.failure_mode_deny)
        from meshgate.xds._native_quotas import native_quotas  # (what Envoy's filters hold: as _checks)

        plan, native = contract.quota_plan(policy), native_quotas(policy)
        quotas = {
            m.name: tuple(
                q for q in plan.quotas_of(policy, m.name) if contract.admitted_in_check(policy, q, m, native)
            )
            for m in policy.models
        }
        return cls(rl.domain, {k: v for k, v in quotas.items() if v}, not rl.failure_mode_deny)


def refusal_body(quotas: str, reset: str) -> str:
    """The OpenAI 429 the gateway's local reply gives a request the rate limit filter refused
    (meshgate/xds/_openai.py `local_reply`), for the same quotas and reset."""
    return json.dumps(contract.openai_429(quotas, reset), separators=(",", ":"))


class Admission:
    """Decides the quotas' admission for extauthz, with the rate limiter of this process."""

    def __init__(self, servicer: RateLimitServicer) -> None:
        self._servicer = servicer
        self.plan = AdmissionPlan("", {}, False)

    def prepare(self, policy: Policy) -> AdmissionPlan:
        return AdmissionPlan.of(policy)

    def applies(self, model: str) -> bool:
        return model in self.plan.quotas

    async def admit(
        self, identity: Mapping[str, str], tokens: int, *, openai: bool
    ) -> tuple[Refusal | None, tuple[tuple[str, str], ...]]:
        """(the refusal or None, the rate limit headers for the answer). `identity`: the values of
        the descriptor keys (tenant, user, tier, model), as extauthz sets them in headers. Raises
        StoreUnavailable (StoreFull is one) when the store cannot answer and the policy fails closed."""
        plan = self.plan
        descriptors = tuple(  # (a requests quota: the request's hits, 1)
            Descriptor(
                contract.request_entries(quota, identity),
                hits_addend=tokens if quota.unit == "tokens" else None,
            )
            for quota in plan.quotas[identity["model"]]
        )
        try:
            decision = await self._servicer.decide(Request(plan.domain, descriptors))
        except StoreUnavailable:  # (StoreFull too)
            if plan.fail_open:
                return None, ()
            raise
        headers = tuple((name.lower(), value) for name, value in decision.headers)
        if not decision.over_limit:
            return None, headers
        return _refusal(decision, headers, openai=openai), headers


def _refusal(decision: Decision, headers: tuple[tuple[str, str], ...], *, openai: bool) -> Refusal:
    if not openai:  # the rate limit filter's own 429: no body
        return Refusal((*headers, RATE_LIMITED_HEADER), "")
    reset = dict(headers).get(contract.RESET_HEADER, "")
    more = [("content-type", "application/json"), RATE_LIMITED_HEADER]
    if reset:
        more.append(("retry-after", reset))
    return Refusal((*headers, *more), refusal_body(decision.refused, reset))
