"""MemoryStore details the shared behaviour suite (tests/service/test_ratelimit_behaviour.py) does not
reach: the sweep of expired counters, and a refusal that replaced an expired counter."""

from __future__ import annotations

import asyncio

from meshgate.ratelimit.store import MemoryStore, Slot


def slot(key: str, *, limit: int = 10, hits: int = 1, expires: int = 60, enforce: bool = True) -> Slot:
    return Slot(key, key, limit, hits, expires, 0, enforce, True)


def test_expired_counters_are_swept_by_the_first_call_past_their_expiry() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.apply([slot("a", expires=10)], now=0)
        await store.apply([slot("b", expires=100)], now=0)
        await store.apply([slot("b", expires=100)], now=10)
        assert len(store) == 2  # "a" expired at 10: kept a second more (a call that read 9 finds it)
        await store.apply([slot("b", expires=100)], now=11)
        assert len(store) == 1
        result = await store.apply([slot("a", expires=100)], now=50)
        assert result.admitted and list(result.used) == [0]  # a new window for "a"
        assert store.budget.used > 0
        await store.apply([], now=101)
        assert len(store) == 0 and store.budget.used == 0  # every counter's bytes given back

    asyncio.run(main())


def test_a_refusal_takes_back_every_hit_of_the_pass() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.apply([slot("old", expires=10)], now=0)
        await store.apply([slot("live", expires=100)], now=0)
        # at 20 "old" has expired: the pass starts it afresh, adds to "live", then "full" refuses
        refused = await store.apply(
            [slot("old", expires=100), slot("live", expires=100), slot("full", limit=0)], now=20
        )
        assert not refused.admitted and list(refused.used) == [0, 1, 0]
        after = await store.apply(
            [slot("old", hits=0), slot("live", hits=0), slot("full", hits=0, limit=0)], now=20
        )
        assert list(after.used) == [0, 1, 0]  # nothing of the refused request was counted
        assert len(store) == 1  # only "live": the restarted "old" went back to zero and was removed

    asyncio.run(main())
