"""The byte budgets of the rate limiter's caches (bounds.py), the counter keys of long descriptors
(keys.py), the bounded metric keys and the memory store's budget. Through the servicer and real
Redis: tests/service/test_ratelimit_bounds.py."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from meshgate.ratelimit import Descriptor, Limiter, MemoryStore, Request, StoreUnavailable
from meshgate.ratelimit.bounds import Budget, request_bytes
from meshgate.ratelimit.config import parse_config
from meshgate.ratelimit.keys import BODY_MAX, TAG_MAX, counter_base
from meshgate.ratelimit.metrics import LABEL_MAX, OVERRIDE_KEY, RateLimitMetrics
from meshgate.ratelimit.model import RateLimitConfig
from meshgate.ratelimit.service import to_request
from meshgate.ratelimit.store import Slot, StoreFull


def test_a_budget_refuses_an_oversized_entry_and_empties_its_cache_when_full() -> None:
    cache: dict[int, int] = {}
    budget = Budget("t", 1000, entry_max=300)
    assert not budget.admit(cache, 301) and budget.oversized == 1 and budget.used == 0
    for i in range(3):
        assert budget.admit(cache, 300)
        cache[i] = i
    assert budget.used == 900 and budget.clears == 0
    assert budget.admit(cache, 300)  # 1200 > 1000: the cache starts again
    assert cache == {} and budget.used == 300 and budget.clears == 1
    counted = Budget("c", 10, entry_max=10, entries_max=2)
    cache = {1: 1, 2: 2}
    assert counted.admit(cache, 1) and cache == {}  # at its entry count: emptied too


@pytest.mark.parametrize(
    ("descriptors", "entries", "size"),
    [(1, 1, 8), (1, 3, 8), (5, 3, 12), (10, 1, 0), (1, 1, 3000), (1, 2, 20000)],
)
def test_request_bytes_is_a_close_upper_bound_of_what_converted_requests_hold(
    descriptors: int, entries: int, size: int
) -> None:
    """What `to_request` builds and the servicer keeps (its entry and dict slot included), measured by
    tracemalloc: the estimate is never below it, and at most a quarter above (plus a constant)."""
    raws = []
    for i in range(500):
        pb = rls_pb2.RateLimitRequest(domain="gateway")
        for d in range(descriptors):
            descriptor = pb.descriptors.add()
            for e in range(entries):
                value = ("é" if e % 2 else "") + f"{i}-{d}-{e}-" + "v" * size  # latin-1 and ascii strings
                descriptor.entries.add(key=f"key{e}", value=value)
        raws.append(pb.SerializeToString())
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = {raw: [to_request(rls_pb2.RateLimitRequest.FromString(raw))] for raw in raws}
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    estimated = sum(request_bytes(r.domain, r.descriptors) for [r] in kept.values())
    assert held <= estimated <= 1.25 * held + 100 * len(kept)


def test_long_values_get_short_counter_keys_and_still_count_apart() -> None:
    plain = counter_base("gw", [("quota", "q"), ("tenant", "acme"), ("user", "b o")], 60)
    assert plain == ("mg:{acme}:gw:quota=q:tenant=acme:user=b%20o:60:", "acme")  # the layout is unchanged
    long_a = "a" * 60_000
    keys = {
        counter_base("gw", [("path", long_a)], 60)[0],
        counter_base("gw", [("path", long_a[:-1] + "b")], 60)[0],  # differs in its last character
        counter_base("gw", [("path", long_a[:-1]), ("x", "a")], 60)[0],  # the same text, cut elsewhere
        counter_base("gw", [("path", long_a + ":x=a")], 60)[0],
        counter_base("gw", [("tenant", long_a), ("user", "u")], 60)[0],
        counter_base("gw", [("tenant", long_a), ("user", "v")], 60)[0],
        counter_base("gw", [("path", "%" * (BODY_MAX // 2))], 60)[0],  # short raw, long once encoded
        counter_base("gw", [("path", "%" * (BODY_MAX // 2 - 1))], 60)[0],
    }
    assert len(keys) == 8
    assert all(len(k) <= 8 + TAG_MAX + BODY_MAX for k in keys) and max(map(len, keys)) < 100
    tag = counter_base("gw", [("tenant", long_a), ("user", "u")], 60)[1]
    assert tag == counter_base("gw", [("tenant", long_a), ("user", "v")], 60)[1]  # one Cluster slot
    assert tag.startswith("#") and len(tag) == 33


def test_metric_labels_made_of_request_values_are_bounded() -> None:
    """detailed_metric labels carry the request's values: a long one, and new ones past the keys'
    budget, are counted under the rule's own label."""
    yaml = "domain: d\ndescriptors: [{key: v, detailed_metric: true, rate_limit: {unit: hour, requests_per_unit: 9}}]"
    domain, tree = parse_config(yaml, "d.yaml")
    config = RateLimitConfig({domain: tree})
    metrics = RateLimitMetrics(None)
    limiter = Limiter(MemoryStore(), config=config, metrics=metrics)

    async def main() -> None:
        await limiter.decide(Request("d", (Descriptor((("v", "short"),)),)))
        await limiter.decide(Request("d", (Descriptor((("v", "x" * (LABEL_MAX + 1)),)),)))
        metrics._keys_budget.limit = metrics._keys_budget.used  # spent: the next new label folds
        await limiter.decide(Request("d", (Descriptor((("v", "other"),)),)))

    asyncio.run(main())
    assert set(metrics._keys) == {("d", "d.v_short"), ("d", "d.v")}
    assert metrics._keys[("d", "d.v")].total == 2 and metrics._keys_budget.oversized == 2


def test_a_limit_overrides_labels_are_bounded_too() -> None:
    """A limit override's label is made of the request's keys and values, its fallback of its keys:
    both the client's. A long one, and new ones past the budget, end under `<domain>.OVERRIDE_KEY`."""
    domain, tree = parse_config("domain: d\ndescriptors: [{key: v}]", "d.yaml")
    metrics = RateLimitMetrics(None)
    limiter = Limiter(MemoryStore(), config=RateLimitConfig({domain: tree}), metrics=metrics)

    def override(key: str) -> Request:
        return Request("d", (Descriptor(((key, "1"),), limit=(9, "hour")),))

    async def main() -> None:
        await limiter.decide(override("k"))  # its own label
        await limiter.decide(override("k" * LABEL_MAX))  # label too long: its keys' label is too
        metrics._keys_budget.limit = metrics._keys_budget.used  # spent: new labels fold
        for i in range(50):
            await limiter.decide(override(f"key{i}"))

    asyncio.run(main())
    assert set(metrics._keys) == {("d", "d.k_1"), ("d", f"d.{OVERRIDE_KEY}")}
    assert metrics._keys[("d", f"d.{OVERRIDE_KEY}")].total == 51


def slot(key: str, *, expires: int = 60, hits: int = 1) -> Slot:
    return Slot(key, key, 10, hits, expires, 0, True, True)


def test_the_memory_store_refuses_new_counters_past_its_budget_and_keeps_live_ones() -> None:
    store = MemoryStore(budget=2_000)
    n = 0
    with pytest.raises(StoreFull) as caught:
        while True:
            store.apply_now([slot(f"k{n}")], 0)
            n += 1
    assert isinstance(caught.value, StoreUnavailable)  # answered UNAVAILABLE: Envoy's failure mode decides
    assert 3 <= n < 10 and len(store) == n and store.budget.used <= 2_000
    assert list(store.apply_now([slot("k0")], 1).used) == [1]  # a live counter still counts
    assert len(store) == n
    with pytest.raises(StoreFull):  # a request needing a new counter is refused whole, nothing kept
        store.apply_now([slot("k1"), slot("new")], 1)
    assert list(store.apply_now([slot("k1", hits=0)], 1).used) == [1]
    store.apply_now([], 61)  # every window ended: their bytes are given back
    assert len(store) == 0 and store.budget.used == 0
    store.apply_now([slot("again", expires=200)], 61)
    assert len(store) == 1
