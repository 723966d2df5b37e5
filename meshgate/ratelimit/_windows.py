"""A prepared request (what the limiter resolved about it once) and its window slots, rolled when the
clock leaves a window. Private to core.py, which builds and reads them on every call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .decision import Request, Status
from .metrics import KeyCounters
from .model import Rule, Unit
from .store import Slot

__all__ = ["Part", "Phase", "Prepared", "Target", "roll", "slot_for"]

Phase = Literal["", "check", "charge", "reported"]  # reported: an estimate charge to ignore (core.py)


@dataclass(frozen=True, slots=True)
class Target:
    """What one descriptor resolves to; cached per (domain, entries, override) until the config changes."""

    rule: Rule
    entries: tuple[tuple[str, str], ...]  # without the phase entry
    phase: Phase
    base: str  # the counter key up to the window start
    tag: str
    counters: KeyCounters
    window: int  # seconds (rule.window, looked up once)
    limit: int  # rule.requests_per_unit
    sliding: bool
    enforce: bool  # may refuse: not a shadow rule, not a stream-end charge (global shadow aside)
    charge: bool  # adds its hits when admitted: not a check-only probe


@dataclass(slots=True, eq=False)
class Part:
    """A descriptor of a prepared request that a rule applies to, with its counter in the window of
    `end` (the slot is rebuilt when the clock reaches `end`). What answering needs of the target and
    its rule is copied here: one object to read per descriptor."""

    index: int  # position in the request
    target: Target
    hits: int
    enforce: bool  # may refuse: the target's, unless the global shadow mode is on
    limit: int
    unit: Unit
    counters: KeyCounters
    shadow_rule: bool  # the rule's own shadow_mode
    charging: bool  # the stream-end charge phase: never over limit
    charge: bool  # adds its hits when admitted
    sliding: bool
    near: int  # a count above it is near the limit (near_limit_ratio of the limit, floored: an int
    # comparison, where an int against a float costs a conversion per descriptor)
    end: int = 0  # the window's end, epoch seconds
    slot: Slot | None = None
    name: str = ""  # the rule's name (a policy quota's): its statuses carry it (RateLimit-Policy)


@dataclass(slots=True)
class Prepared:
    """Everything about a request that depends neither on the clock nor on the counters: resolved once
    per (request, config, settings), then only the window slots roll."""

    request: Request
    parts: list[Part]
    blank: tuple[Status, ...]  # the statuses of a request no rule applies to: one _NO_LIMIT each
    sliding: bool  # some part has a sliding window: its weight moves with every call
    form: tuple[object, ...]  # the decisions' shape (see Decision.shape), shared by equal forms
    begin: int = 0  # `slots` is good from the latest window start among the parts...
    end: int = 0  # ... to the earliest window end
    # the parts' slots and window ends, replaced (never changed in place) when a window rolls: a call
    # keeps the pair it started with across its store await
    slots: Sequence[Slot] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    usage: tuple[tuple[KeyCounters, int], ...] = ()  # chargeback descriptors: counted, never limited


def roll(prepared: Prepared, now: float) -> None:
    """Point every part whose window does not hold `now` (every sliding one: its weight moves) at the
    counter of the window `now` falls in."""
    second = int(now)
    for part in prepared.parts:
        if not part.end - part.target.window <= second < part.end or part.sliding:
            slot_for(part, now)
    # a list for a kept request: the store may keep what it derives from it by its identity (a tuple
    # is a one-off; see Store)
    slots: list[Slot] = [p.slot for p in prepared.parts]  # type: ignore[misc]
    prepared.slots = slots if prepared.request.keep else tuple(slots)
    prepared.ends = [p.end for p in prepared.parts]
    prepared.begin = max(p.end - p.target.window for p in prepared.parts)
    prepared.end = min(prepared.ends)


def slot_for(part: Part, now: float) -> None:
    """The counter of the window `now` falls in (and the previous one, for a sliding window)."""
    target = part.target
    base, window = target.base, target.window
    start = int(now) - int(now) % window
    key = f"{base}{start}"
    part.end = start + window
    if target.sliding:  # the current counter counts until the next window ends
        weight = max(0, min(1000, int(1000 * (1.0 - (now - start) / window))))
        prev, expires = f"{base}{start - window}", part.end + window + 1
    else:
        weight, prev, expires = 0, key, part.end + 1
    part.slot = Slot(
        key, prev, target.limit, part.hits, expires, weight, part.enforce, target.charge, target.tag
    )
