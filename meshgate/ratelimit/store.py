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

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .bounds import MIB, Budget, sizeof

__all__ = [
    "COUNTERS_BUDGET", "MemoryStore", "Slot", "Store", "StoreFull", "StoreResult", "StoreUnavailable",
    "used_of",
]


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
    """`slots`: the limiter hands in the same list object for a request it keeps, until one of its
    windows rolls (a store may keep what it derives from it, by identity, as RedisStore keeps the
    packed command); a tuple for a one-off request."""

    async def apply(self, slots: Sequence[Slot], now: float) -> StoreResult: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def used_of(current: int, previous: int, weight: int) -> int:
    """What a counter counts: the current window plus the share of the previous one still in view."""
    return current + (previous * weight) // 1000 if weight else current


class StoreFull(StoreUnavailable):
    """The memory store's byte budget is spent: a new counter cannot be kept (the call is answered
    UNAVAILABLE, so Envoy's failure_mode_deny decides, as for any store failure)."""


COUNTERS_BUDGET = 128 * MIB  # the memory store's counters, keys included (~400k counters)
_CELL = 220  # bytes of a counter beside its key: its dict slot, [count, expires, cost], a bucket entry


class MemoryStore:
    """Counters in this process: the default for a single replica.

    Memory: each counter is filed under its expiry second; a call past the earliest expiry sweeps the
    counters that expired (those only), and a timer on the event loop does it when no calls come, so
    an idle store lets its counters go when their windows end. The timer reads no clock of its own:
    it takes the `now` of the last call plus the loop's time since (`now` may come from a test's
    clock). Counters hold at most `budget` bytes
    (`COUNTERS_BUDGET`; keys are short, see keys.py): a request that needs a new counter past it is
    refused with StoreFull; live counters are never dropped to make room."""

    def __init__(self, *, budget: int = COUNTERS_BUDGET) -> None:
        self._counts: dict[str, list[int]] = {}  # key -> [count, expires, bytes counted in the budget]
        self._expiring: dict[int, list[str]] = {}  # expiry second -> keys filed then (some gone since)
        self._next: float = math.inf  # the earliest second in _expiring
        self._peak = 0  # most counters since the dict was last rebuilt (a dict never shrinks itself)
        self.budget = Budget("counters", budget, entry_max=budget)
        self.budgets = (self.budget,)
        self._last_now = 0.0  # the `now` of the last call
        self._timer: asyncio.TimerHandle | None = None
        # when the timer was armed: the last call's `now`, the store's time then, and the loop's time
        self._armed = (0.0, 0.0, 0.0)

    def __len__(self) -> int:
        return len(self._counts)

    async def apply(self, slots: Sequence[Slot], now: float) -> StoreResult:
        return self.apply_now(slots, now)

    def apply_now(self, slots: Sequence[Slot], now: float) -> StoreResult:
        """`apply` with no await: the limiter calls it directly (see Limiter.store). One pass: each slot
        reads its counter, then adds its hits at once when it charges, so a counter shared by several
        slots shows each slot the hits of the earlier ones. A refused request then takes back what the
        pass added (refusals are rare: the limiter's over-limit cache answers the repeated ones)."""
        self._last_now = now
        second = int(now)  # expiries are whole seconds: the same comparisons, int against int
        if second > self._next:
            self._sweep(second)
        counts = self._counts
        used = []
        ok = True
        created: list[Slot] | None = None
        for s in slots:
            cell = counts.get(s.key)
            if cell is not None and cell[1] <= second:  # expired, not swept yet: it starts afresh
                self._remove(s.key)
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
                    counts[s.key] = [hits, s.expires, 0]
                    if created is None:
                        created = []
                    created.append(s)
                else:
                    cell[0] += hits  # one list per live counter, whichever slots share it
                    if s.expires > cell[1]:
                        cell[1] = s.expires
                        self._file(s.key, s.expires)
        if not ok:
            self._take_back(slots)
        elif created is not None:
            self._keep(slots, created)
        return StoreResult(ok, used)

    def _keep(self, slots: Sequence[Slot], created: list[Slot]) -> None:
        """Count the admitted request's new counters in the budget and file them under their expiry;
        if they do not fit, the request is taken back and refused."""
        costs = [sizeof(s.key) + _CELL for s in created]
        if not self.budget.take(sum(costs)):
            self._take_back(slots)
            budget = self.budget
            raise StoreFull(f"memory store full: its counters hold {budget.used} of {budget.limit} bytes")
        counts = self._counts
        for s, cost in zip(created, costs, strict=True):
            cell = counts[s.key]
            cell[2] = cost
            self._file(s.key, cell[1])
        if len(counts) > self._peak:
            self._peak = len(counts)

    def _take_back(self, slots: Sequence[Slot]) -> None:
        """Undo the hits `apply` added for `slots` (a counter back at zero goes)."""
        counts = self._counts
        for s in slots:
            if s.charge and s.hits > 0:
                cell = counts[s.key]
                cell[0] -= s.hits
                if cell[0] <= 0:
                    self._remove(s.key)

    def _remove(self, key: str) -> None:
        cell = self._counts.pop(key)
        if cell[2]:
            self.budget.release(cell[2])

    def _file(self, key: str, expires: int) -> None:
        bucket = self._expiring.get(expires)
        if bucket is not None:
            bucket.append(key)
            return
        self._expiring[expires] = [key]
        if expires < self._next:
            self._next = expires
            self._arm()

    def _sweep(self, second: int) -> None:
        """Remove the counters expired for a second at least at `second` (a call that read the clock
        just before still finds its counter); only the buckets due are read."""
        counts, expiring = self._counts, self._expiring
        for when in [w for w in expiring if w < second]:
            for key in expiring.pop(when):
                cell = counts.get(key)
                if cell is not None and cell[1] <= second:  # else: gone already, or filed again later
                    self._remove(key)
        self._next = min(expiring, default=math.inf)
        if self._peak > 4096 and len(counts) < self._peak // 4:  # give the emptied table back
            self._counts = dict(counts)
            self._peak = len(self._counts)

    def _arm(self, now: float | None = None) -> None:
        """The idle sweep: a timer for the earliest expiry, on the store's time `now` (default: the last
        call's); none outside an event loop (calls sweep)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._timer is not None:
            self._timer.cancel()
        now = self._last_now if now is None else now
        self._armed = (self._last_now, now, loop.time())
        self._timer = loop.call_later(max(0.01, self._next + 1 - now), self._idle_sweep, loop)

    def _idle_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        last, now, armed_at = self._armed
        if self._last_now != last:  # calls came meanwhile (and swept for themselves)
            now = self._last_now
        else:  # idle: the store's time went on as the loop's did
            now += loop.time() - armed_at
            if int(now) > self._next:
                self._sweep(int(now))
        if self._expiring:
            self._arm(now)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._counts.clear()
        self._expiring.clear()
        self._next = math.inf
        self.budget.reset()
