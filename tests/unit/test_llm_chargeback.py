"""Chargeback counters (meshgate/ratelimit/usage.py) through the limiter the servicer calls: the stream-end
descriptors `meshgate.usage=<kind>, tenant, model` are counted per declared (tenant, model), never limited,
never stored; undeclared names are not counted (the label set stays bounded by the policy)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from meshgate import contract
from meshgate.policy import parse_policy
from meshgate.ratelimit import Descriptor, Limiter, MemoryStore, Request, Slot, StoreResult
from meshgate.ratelimit.compile import compile_policy
from meshgate.ratelimit.config import merge_domains
from meshgate.ratelimit.metrics import RateLimitMetrics

POLICY: dict[str, Any] = {
    "version": 1,
    "tenants": [{"name": "acme", "quotas": ["tpd"]}, {"name": "globex"}],
    "models": [
        {"name": "chat", "protocol": "openai", "versions": [{"name": "v1", "endpoints": ["127.0.0.1:9"]}]},
        {"name": "iris", "versions": [{"name": "v1", "endpoints": ["127.0.0.1:9"]}]},
    ],
    "quotas": [{"name": "tpd", "per": "tenant", "unit": "tokens", "limit": 100, "window": "day"}],
}


def usage(kind: str, tenant: str, model: str, hits: int) -> Descriptor:
    return Descriptor(((contract.USAGE_KEY, kind), ("tenant", tenant), ("model", model)), hits_addend=hits)


class Recording:
    """The memory store, recording the counter keys each call reaches."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.keys: set[str] = set()

    async def apply(self, slots: Sequence[Slot], now: float) -> StoreResult:
        self.keys.update(slot.key for slot in slots)
        return await self.inner.apply(slots, now)


def totals(registry: CollectorRegistry) -> dict[str, float]:
    """meshgate_ratelimit_total_hits_total by key, as a scrape sees it (zeros left out)."""
    return {
        sample.labels["key"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "meshgate_ratelimit_total_hits_total" and sample.value
    }


def test_usage_descriptors_are_counted_per_declared_tenant_and_model_and_never_limited() -> None:
    policy = parse_policy(yaml.safe_dump(POLICY), "policy.yaml")
    domain, tree = compile_policy(policy)
    store = Recording()
    registry = CollectorRegistry()
    metrics = RateLimitMetrics(registry)
    limiter = Limiter(store, config=merge_domains({domain: ("policy", tree)}), metrics=metrics)
    charge = Descriptor((("quota", "tpd"), ("tenant", "acme"), (contract.PHASE_KEY, contract.CHARGE)), hits_addend=30)

    async def stream_end(*descriptors: Descriptor) -> bool:
        decision = await limiter.decide(Request(domain, descriptors))
        return decision.over_limit

    for _ in range(2):  # what Envoy sends at stream end: the token charge and the chargeback descriptors
        assert not asyncio.run(stream_end(
            charge, usage("requests", "acme", "chat", 1), usage("prompt_tokens", "acme", "chat", 12),
            usage("completion_tokens", "acme", "chat", 18),
        ))  # fmt: skip
    # far above any limit: never refused, never a counter in the store
    assert not asyncio.run(stream_end(usage("completion_tokens", "globex", "chat", 10**9)))
    # undeclared names and a model whose usage is not read: not counted
    assert not asyncio.run(stream_end(
        usage("prompt_tokens", "nobody", "chat", 5), usage("prompt_tokens", "acme", "no-such-model", 5),
        usage("prompt_tokens", "acme", "iris", 5), usage("bogus-kind", "acme", "chat", 5),
    ))  # fmt: skip

    prefix = f"{domain}.{contract.USAGE_KEY}"
    assert totals(registry) == {
        f"{domain}.quota_tpd.tenant_acme": 60,
        f"{prefix}_requests.tenant_acme.model_chat": 2,
        f"{prefix}_prompt_tokens.tenant_acme.model_chat": 24,
        f"{prefix}_completion_tokens.tenant_acme.model_chat": 36,
        f"{prefix}_completion_tokens.tenant_globex.model_chat": 10**9,
    }
    assert [key.split(":")[3] for key in store.keys] == ["quota=tpd"]  # chargeback never reaches the store
