"""The counter store: one narrow async interface, an in-memory backend here, Redis in `redis_store.py`.

`apply` is the whole contract. Given the counters a request touches, it reads every counter, decides
whether the request is admitted (no enforcing counter would go past its limit), and only then adds
the hits to every charging counter: all or nothing, atomically. Counters are taken in order: when
several of a request's descriptors share one counter, each sees the hits of the earlier ones, as
envoyproxy/ratelimit (which increments them one after the other) reports them. Both backends run the
same arithmetic so one behaviour suite covers them. (The memory store adds as it reads and takes the
hits back from a refused request, with no await in between: nobody sees the difference.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["MemoryStore", "Slot", "Store", "StoreResult", "StoreUnavailable", "used_of"]


class StoreUnavailable(Exception):
    """The store did not answer (timeout, connection refused, server error): a transient failure."""


@dataclass(slots=True)  # hot path: frozen would cost ~1 us per instance; never mutated
class Slot:
    """One counter a request touches, in one window."""

    key: str  # the counter of the current window
    prev_key: str  # the previous window's counter (sliding windows); == key for fixed windows
    limit: int
    hits: int
    expires: int  # when the current counter may go, epoch seconds (of the clock `apply` is given)
    weight: int  # per mille of the previous window still counted; 0 for a fixed window
    enforce: bool  # may refuse the request (not shadow, not a stream-end charge)
    charge: bool  # adds `hits` when the request is admitted (not a check-only probe)
    tag: str = ""  # hash tag: counters of one tag live in one Redis Cluster slot


@dataclass(slots=True)  # hot path, never mutated
class StoreResult:
    admitted: bool
    used: Sequence[int]  # each counter before this request (sliding: weighted sum of two windows)


class Store(Protocol):
    async def apply(self, slots: Sequence[Slot], now: float) -> StoreResult: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def used_of(current: int, previous: int, weight: int) -> int:
    """What a counter counts: the current window plus the share of the previous one still in view."""
    return current + (previous * weight) // 1000 if weight else current


class MemoryStore:
    """Counters in this process: the default for a single replica. Expired counters are swept lazily."""

    def __init__(self, *, sweep_every: int = 4096) -> None:
        self._counts: dict[str, list[int]] = {}  # key -> [count, expires]; expired ones swept lazily
        self._sweep_every = sweep_every
        self._countdown = sweep_every  # calls until the next sweep

    def __len__(self) -> int:
        return len(self._counts)

    async def apply(self, slots: Sequence[Slot], now: float) -> StoreResult:
        return self.apply_now(slots, now)

    def apply_now(self, slots: Sequence[Slot], now: float) -> StoreResult:
        """`apply` with no await: the limiter calls it directly (see Limiter.store). One pass: each slot
        reads its counter, then adds its hits at once when it charges, so a counter shared by several
        slots shows each slot the hits of the earlier ones. A refused request then takes back what the
        pass added (refusals are rare: the limiter's over-limit cache answers the repeated ones)."""
        self._countdown -= 1
        if not self._countdown:
            self._sweep(now)
        counts = self._counts
        second = int(now)  # expiries are whole seconds: the same comparisons, int against int
        used = []
        ok = True
        for s in slots:
            cell = counts.get(s.key)
            if cell is not None and cell[1] <= second:  # expired: the window starts again from zero
                cell = None
            count = 0 if cell is None else cell[0]
            if s.weight:
                prev = counts.get(s.prev_key)
                count = used_of(count, prev[0] if prev is not None and prev[1] > second else 0, s.weight)
            used.append(count)
            hits = s.hits
            if s.enforce and count + hits > s.limit:
                ok = False
            if s.charge and hits > 0:
                if cell is None:
                    counts[s.key] = [hits, s.expires]
                else:
                    cell[0] += hits  # one list per live counter, whichever slots share it
                    if s.expires > cell[1]:
                        cell[1] = s.expires
        if not ok:
            self._take_back(slots)
        return StoreResult(ok, used)

    def _take_back(self, slots: Sequence[Slot]) -> None:
        """Undo the hits `apply` added for `slots` (a counter back at zero goes)."""
        counts = self._counts
        for s in slots:
            if s.charge and s.hits > 0:
                cell = counts[s.key]
                cell[0] -= s.hits
                if cell[0] <= 0:
                    del counts[s.key]

    def _sweep(self, now: float) -> None:
        self._countdown = self._sweep_every
        for key in [k for k, (_, expires) in self._counts.items() if expires <= now]:
            del self._counts[key]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._counts.clear()
