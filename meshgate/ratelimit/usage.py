"""Chargeback: what each tenant used of each LLM model, counted from the stream-end descriptors.

At stream end Envoy sends, per OpenAI model route, `meshgate.usage=<kind>, tenant=<t>, model=<m>` with
hits_addend = that number of the backend's usage (kind: requests, prompt_tokens, completion_tokens; see
meshgate/contract.py and docs/llm.md). They are counted, never limited, and never touch the store.

Bounded by the policy: the compiled tree (`usage_nodes`) holds a node only for the tenants and OpenAI
models the policy declares, each leaf an unlimited rule named `contract.USAGE_RULE`; a descriptor that
does not reach such a leaf (an undeclared name) is not counted. Each (kind, tenant, model) is one key
of the per-key counters, `meshgate_ratelimit_total_hits_total{domain, key="<domain>.meshgate.usage_
<kind>.tenant_<t>.model_<m>"}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from meshgate import contract
from meshgate.policy.model import Policy

from .metrics import KeyCounters, RateLimitMetrics
from .model import Node, RateLimitConfig, Rule

__all__ = ["usage_hits", "usage_nodes"]


def usage_nodes(policy: Policy, domain: str) -> dict[tuple[str, str | None], Node]:
    """The chargeback subtrees of the policy's domain: `meshgate.usage=<kind>` -> each declared tenant
    -> each OpenAI model (the models level shared by every tenant: kinds x (tenants + models) nodes)."""
    models = sorted(m.name for m in policy.models if contract.reads_usage(m))
    if not models or not policy.tenants:
        return {}
    nodes: dict[tuple[str, str | None], Node] = {}
    for kind in contract.USAGE_KINDS:
        leaf = Node(
            rule=Rule(
                full_key=f"{domain}.{contract.USAGE_KEY}_{kind}",
                requests_per_unit=0,
                unit="second",
                unlimited=True,
                name=contract.USAGE_RULE,
            )
        )
        by_model = Node(children={("model", m): leaf for m in models})
        tenants = Node(children={("tenant", t.name): by_model for t in policy.tenants})
        nodes[(contract.USAGE_KEY, kind)] = tenants
    return nodes


class _Descriptor(Protocol):
    @property
    def entries(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def hits_addend(self) -> int | None: ...


def usage_hits(
    config: RateLimitConfig,
    metrics: RateLimitMetrics,
    domain: str,
    descriptors: Sequence[_Descriptor],
    default_hits: int,
) -> tuple[tuple[KeyCounters, int], ...]:
    """(counters, hits) of each chargeback descriptor among `descriptors` that reaches a declared leaf."""
    found = []
    for descriptor in descriptors:
        entries = descriptor.entries
        if not entries or entries[0][0] != contract.USAGE_KEY:
            continue
        rule = config.match(domain, entries)
        if rule is None or rule.name != contract.USAGE_RULE:
            continue
        hits = descriptor.hits_addend
        label = ".".join([domain, *(f"{k}_{v}" for k, v in entries)])
        counters = metrics.key(domain, label)
        if [k for k, _ in entries] == [contract.USAGE_KEY, "tenant", "model"]:  # (a declared leaf)
            metrics.usage(counters, entries[0][1], entries[1][1], entries[2][1])
        found.append((counters, default_hits if hits is None else hits))
    return tuple(found)
