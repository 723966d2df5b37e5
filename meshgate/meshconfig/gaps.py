"""What a render target cannot enforce of a policy: every feature it drops or weakens, said at render
time (`meshgate render` prints them; `--strict` refuses to write anything when there is one).

meshgate's own gateway (`meshgate serve` + Envoy over xDS) enforces the whole policy and is the
reference; each entry says how a target differs from it, for this policy (a feature the policy does
not use is not listed). docs/meshconfig.md has the table for every feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..policy.model import Policy

__all__ = ["Gap", "gaps"]

Effect = Literal["dropped", "weakened"]


@dataclass(frozen=True, slots=True)
class Gap:
    target: str
    feature: str  # the policy feature, with the names it concerns
    effect: Effect
    detail: str  # what happens instead

    def __str__(self) -> str:
        return f"{self.target}: {self.effect}: {self.feature}: {self.detail}"


def gaps(policy: Policy, target: str) -> list[Gap]:
    """The gaps of `target` (istio, envoy-gateway, kserve) for `policy`, in a stable order."""
    if target == "istio":
        return _istio(policy)
    if target == "envoy-gateway":
        return _envoy_gateway(policy)
    return []


def _names(items: list[str]) -> str:
    return ", ".join(sorted(items))


def _isolation(policy: Policy, target: str) -> list[Gap]:
    out = []
    tenants = [t.name for t in policy.tenants if t.namespace is None]
    if tenants:
        out.append(
            Gap(
                target,
                f"tenant isolation ({_names(tenants)})",
                "dropped",
                "no `namespace` in the policy: no Namespace, ResourceQuota, NetworkPolicy or "
                "AuthorizationPolicy is rendered for these tenants",
            )
        )
    if target == "istio":
        models = [m.name for m in policy.models if m.namespace is None]
        if models:
            out.append(
                Gap(
                    target,
                    f"model namespace isolation ({_names(models)})",
                    "dropped",
                    "no `namespace` in the policy: no STRICT mTLS or namespace-wide AuthorizationPolicy "
                    "where these models run",
                )
            )
    return out


def _openai_429(policy: Policy, target: str) -> list[Gap]:
    if not policy.quotas or not any(m.protocol == "openai" for m in policy.models):
        return []
    detail = "a rate-limited OpenAI request gets a plain 429, not OpenAI's rate_limit_exceeded error"
    return [Gap(target, "OpenAI-shaped 429", "weakened", detail)]


def _istio(policy: Policy) -> list[Gap]:
    out = []
    tokens = [q.name for q in policy.quotas if q.unit == "tokens"]
    if tokens:
        out.append(
            Gap(
                "istio",
                f"token quotas ({_names(tokens)})",
                "weakened",
                "counted at admission with the tokens asked (prompt estimate + max_tokens, or the "
                "context limit), never with the tokens used: istio-proxy has no sse_to_metadata, "
                "transform or match_delegate filter to read the answer's usage (stricter, never looser)",
            )
        )
    served = [m.name for m in policy.models if any(v.served_name is not None for v in m.versions)]
    if served:
        out.append(
            Gap(
                "istio",
                f"served_name ({_names(served)})",
                "dropped",
                "the request reaches the backend with the model name the client called "
                "(istio-proxy has no transform filter to rewrite the body)",
            )
        )
    if policy.tenants and any(m.protocol == "openai" for m in policy.models):
        out.append(
            Gap(
                "istio",
                "chargeback counters (meshgate.usage)",
                "dropped",
                "the answers' usage cannot be read by istio-proxy: no requests / prompt_tokens / "
                "completion_tokens per tenant and model",
            )
        )
    return out + _isolation(policy, "istio")


def _envoy_gateway(policy: Policy) -> list[Gap]:
    out = []
    eg = "envoy-gateway"
    if policy.quotas:
        out.append(
            Gap(
                eg,
                "quotas: all-or-nothing",
                "weakened",
                "Envoy Gateway's own rate limit service counts each rule on its own: a request "
                "refused by one quota still consumes the others",
            )
        )
    sliding = [q.name for q in policy.quotas if q.algorithm == "sliding_window"]
    if sliding:
        out.append(Gap(eg, f"sliding windows ({_names(sliding)})", "dropped", "counted in fixed windows"))
    tokens = [q.name for q in policy.quotas if q.unit == "tokens"]
    if tokens:
        out.append(
            Gap(
                eg,
                f"token quotas ({_names(tokens)})",
                "weakened",
                "no admission check with the tokens asked: charged only after the answer, with "
                "Envoy AI Gateway's llm_total_token (OpenAI models on AIGatewayRoute only); a tenant "
                "over its quota gets one more answer",
            )
        )
    claims = [i.name for i in policy.issuers if i.claims.tier is not None]
    if claims and any("tenant" in q.per for q in policy.quotas):
        out.append(
            Gap(
                eg,
                f"tier from the JWT claim (issuers {_names(claims)})",
                "dropped",
                "limits use the tenant's tier from the policy; a token's tier claim is ignored",
            )
        )
    if policy.gateway.ratelimit.shadow_mode:
        out.append(Gap(eg, "gateway.ratelimit.shadow_mode", "dropped", "every quota is enforced"))
    if policy.quotas and policy.gateway.ratelimit.response_headers != "x-ratelimit":
        out.append(
            Gap(
                eg,
                f"gateway.ratelimit.response_headers: {policy.gateway.ratelimit.response_headers}",
                "dropped",
                "Envoy Gateway's rate limit service sends its own X-RateLimit-* headers",
            )
        )
    out += _openai_429(policy, eg)
    retries = [m.name for m in policy.models if m.retries.attempts]
    if retries:
        out.append(Gap(eg, f"retries ({_names(retries)})", "dropped", "no retry is rendered"))
    mirrored = [m.name for m in policy.models if m.shadow is not None and m.protocol == "openai"]
    if mirrored:
        out.append(Gap(eg, f"shadow ({_names(mirrored)})", "dropped", "AIGatewayRoute has no mirror"))
    return out + _isolation(policy, eg)
