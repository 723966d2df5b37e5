"""The decision core: a plain request in, a plain decision out. No protobuf, no sockets.

Semantics follow envoyproxy/ratelimit (descriptor matching, epoch-aligned windows, shadow mode,
unlimited, replaces, the descriptor's limit override, hits_addend), with two meshgate additions:
all-or-nothing counting (a refused request consumes none of its counters) and the reserved entry
`meshgate.phase` (`check`: test that the hits would fit, consume nothing; `charge`: add the hits,
never refuse) used for LLM token quotas. See docs/ratelimit.md.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

from meshgate import contract

from .metrics import KeyCounters, RateLimitMetrics
from .model import UNIT_SECONDS, RateLimitConfig, Rule, Unit
from .store import Slot, Store, StoreResult
from .usage import usage_hits

__all__ = [
    "HEADER_NAMES",
    "PHASE_KEY",
    "Decision",
    "Descriptor",
    "InvalidRequest",
    "Limiter",
    "Request",
    "Settings",
    "Status",
    "limit_header",
]

PHASE_KEY = contract.PHASE_KEY
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


@dataclass(slots=True)  # hot path: one per call; frozen would cost ~0.3 us; never mutated
class Decision:
    over_limit: bool
    statuses: tuple[Status, ...]
    style: HeaderStyle = "none"  # the response headers asked for (see `headers`)
    # Decisions with equal `shape`s (not None) differ only in over_limit, each status's over_limit,
    # remaining and reset, and the header values: the same statuses carry a limit (the same limit and
    # unit), the same header names. The service keeps a response per shape and updates it in place.
    shape: object = field(default=None, compare=False, repr=False)

    @property
    def worst(self) -> Status | None:
        """The most constraining status carrying a limit: the first over-limit one, else the first of
        the least remaining; None when no limit applies."""
        worst: Status | None = None
        for s in self.statuses:
            if s.limit is None:
                continue
            if worst is None or (
                (s.over_limit and not worst.over_limit)
                or (s.over_limit == worst.over_limit and s.remaining < worst.remaining)
            ):
                worst = s
        return worst

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """The response headers of `style`, for the worst status. Built when asked for, not per call:
        the service sets the values it keeps only when their numbers change."""
        worst = self.worst if self.style != "none" else None
        if worst is None or worst.limit is None or worst.unit is None:
            return ()
        limit, remaining, reset = HEADER_NAMES[self.style]
        return (
            (limit, limit_header(self.style, worst.limit, worst.unit)),
            (remaining, str(worst.remaining)),
            (reset, str(worst.reset)),
        )


# the names of the limit, remaining and reset headers of each style
HEADER_NAMES: dict[HeaderStyle, tuple[str, str, str]] = {
    "x-ratelimit": ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"),
    "draft-03": ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"),
}


def limit_header(style: HeaderStyle, limit: int, unit: Unit) -> str:
    """The value of the limit header: draft-03 adds the quota policy (`10, 10;w=60`)."""
    return f"{limit}, {limit};w={UNIT_SECONDS[unit]}" if style == "draft-03" else str(limit)


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
    limit: int  # rule.requests_per_unit
    sliding: bool
    enforce: bool  # may refuse: not a shadow rule, not a stream-end charge (global shadow aside)
    charge: bool  # adds its hits when admitted: not a check-only probe


_NO_LIMIT = Status()  # a descriptor no rule applies to; shared, like every Status never mutated


@dataclass(slots=True, eq=False)
class _Part:
    """A descriptor of a prepared request that a rule applies to, with its counter in the window of
    `end` (the slot is rebuilt when the clock reaches `end`). What answering needs of the target and
    its rule is copied here: one object to read per descriptor."""

    index: int  # position in the request
    target: _Target
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


@dataclass(slots=True)
class _Prepared:
    """Everything about a request that depends neither on the clock nor on the counters: resolved once
    per (request, config, settings), then only the window slots roll."""

    request: Request
    parts: list[_Part]
    blank: tuple[Status, ...]  # the statuses of a request no rule applies to: one _NO_LIMIT each
    sliding: bool  # some part has a sliding window: its weight moves with every call
    form: tuple[object, ...]  # the decisions' shape (see Decision.shape), shared by equal forms
    begin: int = 0  # `slots` is good from the latest window start among the parts...
    end: int = 0  # ... to the earliest window end
    # the parts' slots and window ends, replaced (never changed in place) when a window rolls: a call
    # keeps the pair it started with across its store await
    slots: list[Slot] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    usage: tuple[tuple[KeyCounters, int], ...] = ()  # chargeback descriptors: counted, never limited


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
        self.store = store  # see the property
        self._config = config or RateLimitConfig()
        self._settings = settings or Settings()
        self.metrics = metrics or RateLimitMetrics(None)
        self._clock = clock
        self._cache = _LocalCache()
        self._targets: dict[tuple[str, tuple[tuple[str, str], ...], object], _Target | None] = {}
        self._prepared: dict[int, _Prepared] = {}  # id(request) -> its preparation (holds the request)
        self._forms: dict[tuple[object, ...], tuple[object, ...]] = {}  # equal forms -> one object

    @property
    def store(self) -> Store:
        return self._store

    @store.setter
    def store(self, store: Store) -> None:
        """A store that answers without waiting (the memory store) offers `apply_now`: called as is, it
        spares every call a coroutine to create and await."""
        self._store = store
        self._apply_now: Callable[[Sequence[Slot], float], StoreResult] | None = getattr(
            store, "apply_now", None
        )

    @property
    def config(self) -> RateLimitConfig:
        return self._config

    @config.setter
    def config(self, config: RateLimitConfig) -> None:
        """A new config applies to the next call: what was resolved under the old one is dropped, and
        so is the over-limit cache (a raised limit must not wait for the window to end)."""
        self._config, self._targets, self._prepared, self._forms = config, {}, {}, {}
        self._cache = _LocalCache()

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings, self._prepared, self._forms = settings, {}, {}

    async def decide(self, request: Request) -> Decision:
        prepared = self._prepared.get(id(request))
        if prepared is None or prepared.request is not request:
            prepared = self._prepare(request)
        for usage_counters, usage in prepared.usage:  # chargeback (usage.py)
            usage_counters.total += usage
        if not prepared.parts:
            return Decision(False, prepared.blank, self._settings.response_headers, prepared.form)
        settings, now = self._settings, self._clock()
        second = int(now)
        if not prepared.begin <= second < prepared.end or prepared.sliding:
            _roll(prepared, now)
        cache = self._cache if settings.local_cache else None
        if cache is not None and cache.until:  # nothing cached: nothing to look up
            blocked = [p for p in prepared.parts if _blocked(cache, p, now)]
            if blocked:
                return _from_cache(prepared, blocked, second, settings)
        slots, ends = prepared.slots, prepared.ends
        apply_now = self._apply_now
        result = apply_now(slots, now) if apply_now is not None else await self._store.apply(slots, now)
        admitted = result.admitted
        statuses = list(prepared.blank)
        for part, end, used in zip(prepared.parts, ends, result.used, strict=True):
            # one status per part, inline (a call per descriptor shows on the hot path)
            hits, counters, limit = part.hits, part.counters, part.limit
            if part.charge:  # total hits: what is added, not a check phase's asked tokens
                counters.total += hits
            if used + hits > limit and not part.charging:  # over the limit
                if part.shadow_rule:
                    counters.shadow += 1
                    status = Status(False, limit, part.unit, 0, end - second)
                else:
                    counters.over += 1
                    if settings.shadow_mode:
                        counters.shadow += 1
                    status = Status(True, limit, part.unit, 0, end - second)
            else:
                after = used + hits if admitted and part.charge else used
                counters.within += 1
                if after > part.near:
                    counters.near += 1
                status = Status(False, limit, part.unit, limit - after if after < limit else 0, end - second)
            statuses[part.index] = status
            if cache is not None and part.enforce and used >= limit and not part.sliding:
                cache.add(part.slot.key, end, now)  # type: ignore[union-attr]
        return _decision(not admitted, statuses, settings, prepared.form)

    # preparing -------------------------------------------------------------------------------------
    def _prepare(self, request: Request) -> _Prepared:
        """Resolve every descriptor (rule, counter key, hits), drop the replaced ones; kept by the
        request's identity (the service hands in the same Request for the same bytes) until the config
        or the settings change."""
        if not request.domain:
            raise InvalidRequest("rate limit domain must not be empty")
        if not request.descriptors:
            raise InvalidRequest("rate limit descriptor list must not be empty")
        targets = [self._target(request.domain, d) for d in request.descriptors]
        replaced = {name for t in targets if t is not None for name in t.rule.replaces}
        default_hits = request.hits_addend or 1
        shadow, near = self._settings.shadow_mode, self._settings.near_limit_ratio
        parts = []
        for i, (target, descriptor) in enumerate(zip(targets, request.descriptors, strict=True)):
            if target is None or (replaced and target.rule.name in replaced):
                continue
            hits = default_hits if descriptor.hits_addend is None else descriptor.hits_addend
            rule = target.rule
            parts.append(_Part(
                i, target, hits, target.enforce and not shadow, target.limit, rule.unit, target.counters,
                rule.shadow_mode, target.phase == "charge", target.charge, target.sliding,
                math.floor(target.limit * near),
            ))
        blank = (_NO_LIMIT,) * len(request.descriptors)
        style = self._settings.response_headers
        form: tuple[object, ...] = (len(blank), style, tuple((p.index, p.limit, p.unit) for p in parts))
        if len(self._forms) >= 10_000:
            self._forms = {}
        form = self._forms.setdefault(form, form)
        prepared = _Prepared(request, parts, blank, any(p.sliding for p in parts), form)
        config, metrics = self._config, self.metrics
        prepared.usage = usage_hits(config, metrics, request.domain, request.descriptors, default_hits)
        if len(self._prepared) >= 50_000:
            self._prepared = {}
        self._prepared[id(request)] = prepared
        return prepared

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
            limit=rule.requests_per_unit,
            sliding=rule.algorithm == "sliding_window",
            enforce=not rule.shadow_mode and phase != "charge",
            charge=phase != "check",
        )


# answering --------------------------------------------------------------------------------------------
def _from_cache(prepared: _Prepared, blocked: list[_Part], second: int, settings: Settings) -> Decision:
    """Refused without a store call. The other descriptors were not looked up: reported OK, full."""
    statuses = list(prepared.blank)
    for part in prepared.parts:
        over = any(part is b for b in blocked)
        if over:
            counters = part.counters
            if part.charge:
                counters.total += part.hits
            counters.over += 1
            counters.local_cache += 1
        remaining = 0 if over else part.limit
        statuses[part.index] = Status(over, part.limit, part.unit, remaining, part.end - second)
    return _decision(True, statuses, settings, prepared.form)


def _roll(prepared: _Prepared, now: float) -> None:
    """Point every part whose window does not hold `now` (every sliding one: its weight moves) at the
    counter of the window `now` falls in."""
    second = int(now)
    for part in prepared.parts:
        if not part.end - part.target.window <= second < part.end or part.sliding:
            _slot(part, now)
    prepared.slots = [p.slot for p in prepared.parts]  # type: ignore[misc]
    prepared.ends = [p.end for p in prepared.parts]
    prepared.begin = max(p.end - p.target.window for p in prepared.parts)
    prepared.end = min(prepared.ends)


def _slot(part: _Part, now: float) -> None:
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


def _blocked(cache: _LocalCache, part: _Part, now: float) -> bool:
    return part.enforce and part.hits > 0 and not part.sliding and cache.blocked(part.slot.key, now)  # type: ignore[union-attr]


def _decision(over: bool, statuses: Sequence[Status], settings: Settings, shape: object) -> Decision:
    return Decision(over and not settings.shadow_mode, tuple(statuses), settings.response_headers, shape)
