"""The caches of extauthz, each bounded in bytes as well as in entries (budgets in bounds.py).

The bytes are an estimate each cache keeps as it goes (no walk over the entries): the sizes of the
strings an entry holds (`sys.getsizeof`, which counts their object headers) plus a fixed overhead for
the entry's containers, measured on CPython 3.11 and rounded up. An entry over its cache's per-entry
bound is not kept at all; otherwise the oldest (the least recently used, for decisions) go first.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from .request import Decision, Target

__all__ = ["BoundedMemo", "DecisionCache", "decision_bytes", "strings_bytes", "target_bytes"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_sizeof = sys.getsizeof
# Objects an entry holds besides its strings (dict slots, tuples, the frozen dataclasses, a float), in
# bytes; measured with tracemalloc on CPython 3.11 (tests/unit/test_extauthz_bounds.py checks them).
ENTRY_OVERHEAD = 256
DECISION_OVERHEAD = 512  # Decision, Identity (roles tuple), Target


def strings_bytes(values: Iterable[str]) -> int:
    return sum(map(_sizeof, values))


def target_bytes(target: Target) -> int:
    return _sizeof(target.model) + _sizeof(target.version) + 128


def decision_bytes(decision: Decision) -> int:
    """What one Decision holds, its strings included (most are shared with the policy: counted anyway)."""
    size = DECISION_OVERHEAD + _sizeof(decision.message)
    who, target = decision.identity, decision.target
    if who is not None:
        size += _sizeof(who.user) + _sizeof(who.tenant) + _sizeof(who.tier) + _sizeof(who.credential)
        size += strings_bytes(who.roles) + 8 * len(who.roles)
    if target is not None:
        size += _sizeof(target.model) + _sizeof(target.version)
    if decision.listing:  # a model list's names
        size += strings_bytes(decision.listing) + 8 * len(decision.listing)
    return size


class BoundedMemo(Generic[K, V]):
    """A memo of at most `max_bytes` (sizes given by the caller on `put`); oldest entries go first.
    `get` is the underlying dict's own method: a hit costs one dict lookup."""

    __slots__ = ("_entries", "_sizes", "bytes", "get", "max_bytes", "max_entry_bytes")

    def __init__(self, max_bytes: int, *, max_entry_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._sizes: dict[K, int] = {}
        self.bytes = 0
        self.get: Callable[[K], V | None] = self._entries.get

    def put(self, key: K, value: V, size: int) -> bool:
        """Keep `value` under `key` unless its entry (`size` bytes, key included) is over the per-entry
        bound. Returns whether it was kept."""
        size += ENTRY_OVERHEAD
        if size > self.max_entry_bytes:
            return False
        self.discard(key)
        while self.bytes + size > self.max_bytes:
            oldest, _ = self._entries.popitem(last=False)
            self.bytes -= self._sizes.pop(oldest)
        self._entries[key] = value
        self._sizes[key] = size
        self.bytes += size
        return True

    def discard(self, key: K) -> None:
        if self._entries.pop(key, None) is not None:
            self.bytes -= self._sizes.pop(key)

    def clear(self) -> None:
        self._entries.clear()
        self._sizes.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


class DecisionCache:
    """An LRU of decisions bounded in entries and in bytes. Each entry carries its own expiry (never past
    the token's exp). `generation` counts the clears: a decision begun before one is not put after it."""

    __slots__ = ("_entries", "bytes", "generation", "max_bytes", "max_entries", "max_entry_bytes")

    def __init__(self, max_entries: int, *, max_bytes: int, max_entry_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self._entries: OrderedDict[bytes, tuple[float, Decision, int]] = OrderedDict()
        self.bytes = 0
        self.generation = 0

    def get(self, key: bytes, now: float) -> Decision | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, decision, size = entry
        if now >= expires:
            del self._entries[key]
            self.bytes -= size
            return None
        self._entries.move_to_end(key)
        return decision

    def put(self, key: bytes, decision: Decision, expires: float) -> bool:
        """Cache `decision` unless the cache is disabled or the entry is over the per-entry bound."""
        if self.max_entries <= 0:
            return False
        size = ENTRY_OVERHEAD + _sizeof(key) + decision_bytes(decision)
        if size > self.max_entry_bytes:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[2]
        self._entries[key] = (expires, decision, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
        self.generation += 1

    def __len__(self) -> int:
        return len(self._entries)
