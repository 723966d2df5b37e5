"""Byte budgets for what the rate limiter keeps in memory, and the size of what it keeps.

Every cache on the request path (the servicer's requests and responses, the limiter's resolved
descriptors, prepared requests, decision shapes and over-limit counters, the Redis store's packed
commands, the `current_limit` messages, the metric keys) and the memory store's counters hold at most
their `Budget` of bytes, estimated per entry when it is added (`sizeof`, `request_bytes`). A cache
that would go past its budget is emptied and starts again (the entries are a cache: the next call
builds them anew); an entry larger than `entry_max` is not kept at all (its call is answered without
it). The memory store never drops a live counter: a new one that does not fit is refused (see
MemoryStore). `RateLimitMetrics` exports each budget: `meshgate_ratelimit_cache_bytes{cache}` and
`..._limit_bytes`, `..._clears_total`, `..._oversized_total`. See docs/ratelimit.md, "Memory".
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

__all__ = ["MIB", "Budget", "OverLimitCache", "entries_bytes", "request_bytes", "sizeof"]

MIB = 1 << 20
sizeof = sys.getsizeof  # a str's or bytes' exact size (header included): one C call
_ENTRY = 64  # an entry (key, value): its tuple, and its reference in the descriptor's entries tuple
_DESCRIPTOR = 120  # a Descriptor and its entries tuple
_BLOCKED = 120  # an over-limit cache entry beside its key: its dict slot and expiry
_REQUEST = 220  # a Request, its descriptors tuple, the servicer's entry and its dict slot


def entries_bytes(entries: Iterable[tuple[str, str]]) -> int:
    """What a descriptor's (key, value) pairs hold: their strings exactly, plus their tuples."""
    return sum(_ENTRY + sizeof(key) + sizeof(value) for key, value in entries)


def request_bytes(domain: str, descriptors: Iterable[Any]) -> int:
    """What a converted request holds: its strings, exactly, plus the objects around them (measured
    with tracemalloc: within 1-1.25x above what the usual shapes take, see
    tests/unit/test_ratelimit_bounds.py). `descriptors`: core Descriptors (with `.entries`)."""
    return _REQUEST + sizeof(domain) + sum(_DESCRIPTOR + entries_bytes(d.entries) for d in descriptors)


class Budget:
    """The bytes one cache may hold. The cache's owner asks `admit` before it adds an entry (`take`
    for a store that must not drop entries) and tells `release` / `reset` what it removed; the
    numbers are estimates made when entries are added, never a walk over the cache."""

    __slots__ = ("clears", "entries_max", "entry_max", "limit", "name", "oversized", "used")

    def __init__(
        self, name: str, limit: int, *, entry_max: int | None = None, entries_max: int = 1 << 62
    ) -> None:
        self.name = name
        self.limit = limit
        self.entry_max = limit // 64 if entry_max is None else min(entry_max, limit)
        self.entries_max = entries_max
        self.used = 0  # bytes of the entries counted since the cache was last emptied
        self.clears = 0  # times the cache was emptied to make room
        self.oversized = 0  # entries not kept (larger than entry_max; the memory store: refused)

    def __repr__(self) -> str:
        return f"Budget({self.name!r}, {self.used}/{self.limit} bytes)"

    def admit(self, cache: MutableMapping[Any, Any], cost: int) -> bool:
        """Room in `cache` for an entry of about `cost` bytes: False (nothing changes) when the entry
        alone is over `entry_max`, so the caller does not keep it; else True, after emptying `cache`
        if the entry would take it past `limit` or `entries_max` entries."""
        if cost > self.entry_max:
            self.oversized += 1
            return False
        if self.used + cost > self.limit or len(cache) >= self.entries_max:
            cache.clear()
            self.used = 0
            self.clears += 1
        self.used += cost
        return True

    def take(self, cost: int) -> bool:
        """Count `cost` bytes if they fit; False (nothing counted) if not. For entries that must not
        be dropped to make room (the memory store's live counters)."""
        if self.used + cost > self.limit:
            self.oversized += 1
            return False
        self.used += cost
        return True

    def release(self, cost: int) -> None:
        self.used -= cost

    def reset(self) -> None:
        """The owner emptied or replaced the cache."""
        self.used = 0


class OverLimitCache:
    """The limiter's local over-limit cache: counters known to be exhausted until their window ends,
    refused without a store call; within `budget` (keys are short: keys.py)."""

    __slots__ = ("budget", "until")

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.until: dict[str, float] = {}

    def blocked(self, key: str, now: float) -> bool:
        expires = self.until.get(key)
        if expires is None:
            return False
        if expires <= now:
            del self.until[key]
            return False
        return True

    def add(self, key: str, expires: float) -> None:
        if key in self.until or self.budget.admit(self.until, sizeof(key) + _BLOCKED):
            self.until[key] = expires
