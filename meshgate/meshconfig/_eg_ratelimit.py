"""The policy's quotas as an Envoy Gateway BackendTrafficPolicy (global rate limit).

Envoy Gateway runs these rules in its own rate limit service (envoyproxy/ratelimit on Redis), not in
meshgate: what that service cannot do is dropped or weakened, and `gaps` lists it at render time
(fixed windows only, no all-or-nothing, tokens only charged after the answer, the tier of a JWT's tier
claim unknown). What can be the same is: the same requests are counted together (the selectors follow
the descriptor keys of meshgate's compiled limiter) and the limit after tier arithmetic is
`contract.quota_limit`, the limiter's own.
"""

from __future__ import annotations

from meshgate import contract

from ..policy.model import Policy, Quota
from ._common import Obj, metadata

__all__ = ["AI_METADATA_NS", "traffic_policy"]

AI_METADATA_NS = "io.envoy.ai_gateway"
_UNITS = {"second": "Second", "minute": "Minute", "hour": "Hour", "day": "Day"}


def _models_regex(names: tuple[str, ...]) -> str:
    """An RE2 alternation of model names (names use [A-Za-z0-9_.-]; a pattern matching none: `^()$`)."""
    return "^(" + "|".join(n.replace(".", "\\.") for n in names) + ")$"


def _rule(policy: Policy, quota: Quota, tenant: str | None) -> Obj:
    """One rule: the requests of `tenant` (None: of every tenant, the quota has no tenant key) counted
    per the quota's other keys, on the models the quota counts."""
    headers: list[Obj] = []
    if tenant is not None:
        headers.append({"name": contract.TENANT_HEADER, "type": "Exact", "value": tenant})
    if "user" in quota.per:
        headers.append({"name": contract.USER_HEADER, "type": "Distinct"})
    if quota.name not in contract.quota_plan(policy).every_model:
        models = contract.quota_plan(policy).models[quota.name]
        headers.append(
            {"name": contract.MODEL_HEADER, "type": "RegularExpression", "value": _models_regex(models)}
        )
    elif "model" in quota.per:
        headers.append({"name": contract.MODEL_HEADER, "type": "Distinct"})
    rule: Obj = {
        "clientSelectors": [{"headers": headers}],
        "limit": {"requests": contract.quota_limit(policy, quota, tenant), "unit": _UNITS[quota.window]},
    }
    if quota.unit == "tokens":
        rule["cost"] = {
            "request": {"from": "Number", "number": 0},
            "response": {
                "from": "Metadata",
                "metadata": {"namespace": AI_METADATA_NS, "key": "llm_total_token"},
            },
        }
    if quota.shadow_mode:
        rule["shadowMode"] = True
    return rule


def _rules(policy: Policy) -> list[Obj]:
    rules: list[Obj] = []
    for quota in policy.quotas:
        if "tenant" not in quota.per:
            # as in meshgate's limiter: one counter (per user / model) for every request it counts,
            # whichever tenant sends it
            rules.append(_rule(policy, quota, None))
            continue
        for tenant in sorted(policy.tenants, key=lambda t: t.name):
            if quota.name in tenant.quotas:
                rules.append(_rule(policy, quota, tenant.name))
    return rules


def traffic_policy(policy: Policy, namespace: str, target: list[Obj]) -> Obj | None:
    rules = _rules(policy)
    if not rules:
        return None
    spec = {"targetRefs": target, "rateLimit": {"type": "Global", "global": {"rules": rules}}}
    return {
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "BackendTrafficPolicy",
        "metadata": metadata("meshgate-rate-limit", namespace),
        "spec": spec,
    }
