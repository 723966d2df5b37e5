"""The policy's quotas, compiled into the same descriptor tree as envoyproxy/ratelimit YAML.

A quota `q` with `per: [tenant, user]` becomes, under the domain `gateway.ratelimit.domain`:

    quota=q -> tenant=<each tenant listing q> -> user (any value) : limit * tier multiplier

Entries always come in the order quota, tenant, user, model, whatever the order of `per`. Tenants that
do not list a quota get no node for it, so its descriptor matches nothing for them. A quota whose
`per` has no `tenant` is one counter (per user / model) for every request the gateway sends it for,
and the tier multiplier cannot apply. With `model` in `per`, the model entry matches the quota's
`models` patterns (expanded against the policy's models); without it, the xDS routes attach the
descriptor only to the routes of matching models. The same tree holds the chargeback nodes
(`meshgate.usage=<kind> -> tenant -> model`, usage.py): counted, never limited.
"""

from __future__ import annotations

from meshgate import contract
from meshgate.contract import QUOTA_KEY, quota_limit

from ..policy.model import Policy, Quota
from .model import Node, Rule
from .usage import usage_nodes

__all__ = ["QUOTA_KEY", "compile_policy", "quota_limit"]

# the descriptor keys, their order, the tier arithmetic and the rule labels: meshgate/contract.py


def _rule(domain: str, quota: Quota, limit: int, path: str) -> Rule:
    return Rule(
        full_key=f"{domain}.{path}",
        requests_per_unit=limit,
        unit=quota.window,
        shadow_mode=quota.shadow_mode,
        name=quota.name,
        algorithm=quota.algorithm,
    )


def _chain(keys: tuple[str, ...], models: tuple[str, ...], leaf: Rule) -> Node:
    """Nodes for `keys` (below the tenant), the last one carrying `leaf`."""
    if not keys:
        return Node(rule=leaf)
    key, rest = keys[0], keys[1:]
    below = _chain(rest, models, leaf)
    if key == "model" and models != ("*",):
        by_model: dict[tuple[str, str | None], Node] = {("model", m): below for m in models}
        return Node(children=by_model)
    return Node(children={(key, None): below})


def _quota_node(policy: Policy, domain: str, quota: Quota) -> Node | None:
    keys = contract.descriptor_keys(quota)
    plan = contract.quota_plan(policy)
    models = ("*",) if quota.name in plan.every_model else plan.models[quota.name]
    if "tenant" not in keys:
        label = contract.rule_label(quota.name, keys, None)
        return _chain(keys, models, _rule(domain, quota, quota.limit, label))
    tenants: dict[tuple[str, str | None], Node] = {}
    for tenant in policy.tenants:
        if quota.name in tenant.quotas:
            path = contract.rule_label(quota.name, keys, tenant.name)
            rule = _rule(domain, quota, quota_limit(policy, quota, tenant.name), path)
            tenants[("tenant", tenant.name)] = _chain(keys[1:], models, rule)
    return Node(children=tenants) if tenants else None


def compile_policy(policy: Policy) -> tuple[str, Node]:
    """(domain, tree) for the policy's quotas. Pure: same policy in, same tree out."""
    domain = policy.gateway.ratelimit.domain
    children: dict[tuple[str, str | None], Node] = {}
    for quota in policy.quotas:
        node = _quota_node(policy, domain, quota)
        if node is not None:
            children[(QUOTA_KEY, quota.name)] = node
    children.update(usage_nodes(policy, domain))  # chargeback counters (usage.py)
    return domain, Node(children=children)
