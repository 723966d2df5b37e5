"""The decision core: a plain request in, a plain decision out. No protobuf, no sockets.

Semantics follow envoyproxy/ratelimit (descriptor matching, epoch-aligned windows, shadow mode,
unlimited, replaces, the descriptor's limit override, hits_addend), with two meshgate additions:
all-or-nothing counting (a refused request consumes none of its counters) and the reserved entry
`meshgate.phase` (`check`: test that the hits would fit, consume nothing; `charge`: add the hits,
never refuse) used for LLM token quotas. See docs/ratelimit.md.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

from .metrics import KeyCounters, RateLimitMetrics
from .model import UNIT_SECONDS, RateLimitConfig, Rule, Unit
from .store import Slot, Store

__all__ = [
    "PHASE_KEY",
    "Decision",
    "Descriptor",
    "InvalidRequest",
    "Limiter",
    "Request",
    "Settings",
    "Status",
]

PHASE_KEY = "meshgate.phase"
Phase = Literal["", "check", "charge"]
HeaderStyle = Literal["none", "x-ratelimit", "draft-03"]
_PLAIN = re.compile(r"^[A-Za-z0-9_.\-]*$")


class InvalidRequest(ValueError):
    """The request itself is malformed (empty domain, no descriptors)."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    entries: tuple[tuple[str, str], ...]
    limit: tuple[int, Unit] | None = None  # Envoy's override: (requests_per_unit, unit)
    hits_addend: int | None = None  # None: the request's; 0: check only


@dataclass(frozen=True, slots=True)
class Request:
    domain: str
    descriptors: tuple[Descriptor, ...]
    hits_addend: int = 0  # 0 means 1, as in Envoy


@dataclass(slots=True)  # hot path: one per descriptor; frozen would cost ~1 us each; never mutated
class Status:
    over_limit: bool = False
    limit: int | None = None  # requests_per_unit; None when no limit applies
    unit: Unit | None = None
    remaining: int = 0
    reset: int = 0  # seconds until the window ends


@dataclass(frozen=True, slots=True)
class Decision:
    over_limit: bool
    statuses: tuple[Status, ...]
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Settings:
    shadow_mode: bool = False  # global: never refuse, statuses still say OVER_LIMIT
    response_headers: HeaderStyle = "none"
    near_limit_ratio: float = 0.8
    local_cache: bool = True


@dataclass(frozen=True, slots=True)
class _Target:
    """What one descriptor resolves to; cached per (domain, entries, override) until the config changes."""

    rule: Rule
    entries: tuple[tuple[str, str], ...]  # without the phase entry
    phase: Phase
    base: str  # the counter key up to the window start
    tag: str
    counters: KeyCounters
    window: int  # seconds (rule.window, looked up once)
    sliding: bool
    enforce: bool  # may refuse: not a shadow rule, not a stream-end charge (global shadow aside)
    charge: bool  # adds its hits when admitted: not a check-only probe


_NO_LIMIT = Status()  # a descriptor no rule applies to; shared, like every Status never mutated


@dataclass(slots=True)
class _Plan:
    index: int  # position in the request
    target: _Target
    hits: int
    slot: Slot
    reset: int


def _q(text: str) -> str:
    return text if _PLAIN.match(text) else quote(text, safe="")


def _strip_phase(entries: tuple[tuple[str, str], ...]) -> tuple[tuple[tuple[str, str], ...], Phase]:
    phase: Phase = ""
    kept = []
    for key, value in entries:
        if key == PHASE_KEY and value in ("check", "charge"):
            phase = "check" if value == "check" else "charge"
        else:
            kept.append((key, value))
    return tuple(kept), phase


@dataclass(slots=True)
class _LocalCache:
    """Counters known to be exhausted until their window ends: refused without a store call."""

    until: dict[str, float] = field(default_factory=dict)

    def blocked(self, key: str, now: float) -> bool:
        expires = self.until.get(key)
        if expires is None:
            return False
        if expires <= now:
            del self.until[key]
            return False
        return True

    def add(self, key: str, expires: float, now: float) -> None:
        if len(self.until) > 100_000:
            self.until = {k: v for k, v in self.until.items() if v > now}
        self.until[key] = expires


class Limiter:
    """`decide(request) -> Decision` against the live config and a store. Swap `config` at any time."""

    def __init__(
        self,
        store: Store,
        *,
        config: RateLimitConfig | None = None,
        settings: Settings | None = None,
        metrics: RateLimitMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._config = config or RateLimitConfig()
        self.settings = settings or Settings()
        self.metrics = metrics or RateLimitMetrics(None)
        self._clock = clock
        self._cache = _LocalCache()
        self._targets: dict[tuple[str, tuple[tuple[str, str], ...], object], _Target | None] = {}

    @property
    def config(self) -> RateLimitConfig:
        return self._config

    @config.setter
    def config(self, config: RateLimitConfig) -> None:
        self._config, self._targets = config, {}

    async def decide(self, request: Request) -> Decision:
        if not request.domain:
            raise InvalidRequest("rate limit domain must not be empty")
        if not request.descriptors:
            raise InvalidRequest("rate limit descriptor list must not be empty")
        settings, now = self.settings, self._clock()
        plans = self._plan(settings, request, now)
        statuses = [_NO_LIMIT] * len(request.descriptors)
        if not plans:
            return Decision(False, tuple(statuses))
        if settings.local_cache and self._cache.until:  # nothing cached: nothing to look up
            cached = [p for p in plans if self._blocked(p, now)]
            if cached:
                return self._from_cache(plans, cached, statuses, settings)
        result = await self.store.apply([p.slot for p in plans], now)
        for plan, used in zip(plans, result.used, strict=True):
            statuses[plan.index] = self._status(plan, used, result.admitted, settings)
            slot = plan.slot
            if settings.local_cache and slot.enforce and not plan.target.sliding and used >= slot.limit:
                self._cache.add(slot.key, now + plan.reset, now)
        return self._decision(not result.admitted, statuses, settings)

    # planning -------------------------------------------------------------------------------------
    def _plan(self, settings: Settings, request: Request, now: float) -> list[_Plan]:
        targets = [self._target(request.domain, d) for d in request.descriptors]
        replaced = {name for t in targets if t is not None for name in t.rule.replaces}
        default_hits = request.hits_addend or 1
        plans = []
        for i, (target, descriptor) in enumerate(zip(targets, request.descriptors, strict=True)):
            if target is None or (replaced and target.rule.name in replaced):
                continue
            hits = default_hits if descriptor.hits_addend is None else descriptor.hits_addend
            plans.append(_slot(i, target, hits, settings, now))
        return plans

    def _target(self, domain: str, descriptor: Descriptor) -> _Target | None:
        key = (domain, descriptor.entries, descriptor.limit)
        try:
            return self._targets[key]
        except KeyError:
            pass
        if len(self._targets) > 50_000:
            self._targets = {}
        target = self._targets[key] = self._resolve(domain, descriptor)
        return target

    def _resolve(self, domain: str, descriptor: Descriptor) -> _Target | None:
        entries, phase = _strip_phase(descriptor.entries)
        config = self._config
        if descriptor.limit is not None:
            if domain not in config.domains:
                return None
            rpu, unit = descriptor.limit
            path = ".".join(f"{k}_{v}" if v else k for k, v in entries)
            rule: Rule | None = Rule(full_key=f"{domain}.{path}", requests_per_unit=rpu, unit=unit)
        else:
            rule = config.match(domain, entries)
        if rule is None or rule.unlimited:
            return None
        pairs = [f"{_q(k)}={_q(v)}" for k, v in entries]
        tenant = next((v for k, v in entries if k == "tenant"), None)
        tag = _q(tenant) if tenant is not None else (pairs[0] if pairs else "")
        base = f"mg:{{{tag}}}:{_q(domain)}:{':'.join(pairs)}:{rule.window}:"
        label = rule.full_key
        if rule.detailed_metric:
            label = ".".join([domain, *(f"{k}_{v}" for k, v in entries)])
        return _Target(
            rule, entries, phase, base, tag, self.metrics.key(domain, label),
            window=rule.window,
            sliding=rule.algorithm == "sliding_window",
            enforce=not rule.shadow_mode and phase != "charge",
            charge=phase != "check",
        )

    # answering ------------------------------------------------------------------------------------
    def _blocked(self, plan: _Plan, now: float) -> bool:
        slot = plan.slot
        fixed = not plan.target.sliding
        return slot.enforce and fixed and slot.hits > 0 and self._cache.blocked(slot.key, now)

    def _from_cache(
        self, plans: list[_Plan], cached: list[_Plan], statuses: list[Status], settings: Settings
    ) -> Decision:
        """Refused without a store call. The other descriptors were not looked up: reported OK, full."""
        blocked = {id(p) for p in cached}
        for plan in plans:
            rule = plan.target.rule
            over = id(plan) in blocked
            if over:
                counters = plan.target.counters
                counters.total += plan.hits
                counters.over += 1
                counters.local_cache += 1
            remaining = 0 if over else rule.requests_per_unit
            statuses[plan.index] = Status(over, rule.requests_per_unit, rule.unit, remaining, plan.reset)
        return self._decision(True, statuses, settings)

    @staticmethod
    def _status(plan: _Plan, used: int, admitted: bool, settings: Settings) -> Status:
        target, hits = plan.target, plan.hits
        rule, counters, limit = target.rule, target.counters, target.rule.requests_per_unit
        counters.total += hits
        if used + hits > limit and target.phase != "charge":
            if rule.shadow_mode:
                counters.shadow += 1
                return Status(False, limit, rule.unit, 0, plan.reset)
            counters.over += 1
            if settings.shadow_mode:
                counters.shadow += 1
            return Status(True, limit, rule.unit, 0, plan.reset)
        after = used + (hits if admitted and plan.slot.charge else 0)
        counters.within += 1
        if after > limit * settings.near_limit_ratio:
            counters.near += 1
        return Status(False, limit, rule.unit, max(0, limit - after), plan.reset)

    @staticmethod
    def _decision(over: bool, statuses: Sequence[Status], settings: Settings) -> Decision:
        overall = over and not settings.shadow_mode
        return Decision(overall, tuple(statuses), _headers(statuses, settings.response_headers))


def _slot(index: int, target: _Target, hits: int, settings: Settings, now: float) -> _Plan:
    """The counter of the window `now` falls in (and the previous one, for a sliding window)."""
    base, window = target.base, target.window
    elapsed = int(now) % window
    start = int(now) - elapsed
    reset = window - elapsed
    key = f"{base}{start}"
    if target.sliding:
        weight = max(0, min(1000, int(1000 * (1.0 - (now - start) / window))))
        prev, ttl = f"{base}{start - window}", 2 * window
    else:
        weight, prev, ttl = 0, key, reset + 1
    enforce = target.enforce and not settings.shadow_mode
    limit = target.rule.requests_per_unit
    slot = Slot(key, prev, limit, hits, ttl, weight, enforce, target.charge, target.tag)
    return _Plan(index, target, hits, slot, reset)


def _headers(statuses: Sequence[Status], style: HeaderStyle) -> tuple[tuple[str, str], ...]:
    """Headers for the most constraining descriptor: an over-limit one, else the least remaining."""
    if style == "none":
        return ()
    worst: Status | None = None
    for s in statuses:  # the first of the least (not over_limit, remaining)
        if s.limit is not None and s.unit is not None and (
            worst is None or (not s.over_limit, s.remaining) < (not worst.over_limit, worst.remaining)
        ):
            worst = s
    if worst is None or worst.limit is None or worst.unit is None:
        return ()
    if style == "draft-03":
        window = UNIT_SECONDS[worst.unit]
        return (
            ("RateLimit-Limit", f"{worst.limit}, {worst.limit};w={window}"),
            ("RateLimit-Remaining", str(worst.remaining)),
            ("RateLimit-Reset", str(worst.reset)),
        )
    return (
        ("X-RateLimit-Limit", str(worst.limit)),
        ("X-RateLimit-Remaining", str(worst.remaining)),
        ("X-RateLimit-Reset", str(worst.reset)),
    )
