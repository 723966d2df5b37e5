"""The decision core: a plain request in, a plain decision out. No protobuf, no sockets.

Semantics follow envoyproxy/ratelimit (descriptor matching, epoch-aligned windows, shadow mode,
unlimited, replaces, the descriptor's limit override, hits_addend), with two meshgate additions:
all-or-nothing counting (a refused request consumes none of its counters) and the reserved entry
`meshgate.phase` (`check`: test that the hits would fit, consume nothing; `charge`: add the hits,
never refuse) used for LLM token quotas. See docs/ratelimit.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from meshgate import contract

from ._windows import Part, Phase, Prepared, Target, roll
from .bounds import MIB, Budget, OverLimitCache, entries_bytes, request_bytes, sizeof
from .decision import (
    HEADER_NAMES,
    Decision,
    Descriptor,
    HeaderStyle,
    InvalidRequest,
    Request,
    Settings,
    Status,
    limit_header,
)
from .keys import counter_base
from .metrics import OVERRIDE_KEY, RateLimitMetrics
from .model import RateLimitConfig, Rule
from .store import Slot, Store, StoreResult
from .usage import usage_hits

__all__ = [  # the plain types live in decision.py, re-exported here
    "HEADER_NAMES",
    "PHASE_KEY",
    "Decision",
    "Descriptor",
    "HeaderStyle",
    "InvalidRequest",
    "Limiter",
    "Request",
    "Settings",
    "Status",
    "limit_header",
]

PHASE_KEY = contract.PHASE_KEY
_USED_KEY, _REPORTED = contract.USED_KEY, contract.USAGE_REPORTED
_REFUSED_ENTRY, _NONE = contract.REFUSED_ENTRY, contract.USAGE_UNREPORTED
# the limiter's caches (see bounds.py): resolved descriptors, prepared requests, decision shapes and
# the over-limit counters; a request or descriptor larger than its cache's entry limit is resolved
# for its call only
TARGETS_BUDGET, PREPARED_BUDGET, SHAPES_BUDGET, OVER_LIMIT_BUDGET = 16 * MIB, 32 * MIB, 1 * MIB, 4 * MIB
TARGET_MAX, PREPARED_MAX = 16 << 10, 64 << 10  # bytes of one entry
# bytes beside the strings (measured with tracemalloc): a Target and its key; a Prepared and its
# lists; a Part and its Slot; a decision shape per part
_TARGET, _PREPARED, _PART, _SHAPE = 420, 420, 420, 80


_NO_LIMIT = Status()  # a descriptor no rule applies to; shared, like every Status never mutated
UNLIMITED_REMAINING = 2**32 - 1
_UNLIMITED = Status(remaining=UNLIMITED_REMAINING)  # an `unlimited` rule: envoyproxy/ratelimit reports
# limit_remaining math.MaxUint32 and no current_limit (test/service/ratelimit_test.go TestUnlimited)


def _strip_phase(entries: tuple[tuple[str, str], ...]) -> tuple[tuple[tuple[str, str], ...], Phase]:
    """The entries without the reserved phase entry, and the phase. An estimate charge's last entries,
    `meshgate.refused` and `meshgate.used` (contract.USED_KEY), go too: the phase is `charge` when
    neither says otherwise, else `reported` (no rule applies: the backend's reported usage was charged
    by the descriptor beside it, or the request was refused and served nothing)."""
    phase: Phase = ""
    kept = []
    for key, value in entries:
        if key == PHASE_KEY and value in ("check", "charge"):
            phase = "check" if value == "check" else "charge"
        else:
            kept.append((key, value))
    if phase == "charge" and kept and kept[-1][0] == _USED_KEY:
        if kept.pop()[1] == _REPORTED:
            phase = "reported"
        if kept and kept[-1][0] == _REFUSED_ENTRY and kept.pop()[1] != _NONE:
            phase = "reported"
    return tuple(kept), phase


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
        self.metrics = metrics or RateLimitMetrics(None)
        self._clock = clock
        self.store = store  # see the property
        self._config = config or RateLimitConfig()
        self._settings = settings or Settings()
        track = self.metrics.track
        self._targets_budget = track(Budget("targets", TARGETS_BUDGET, entry_max=TARGET_MAX))
        self._prepared_budget = track(Budget("prepared", PREPARED_BUDGET, entry_max=PREPARED_MAX))
        self._forms_budget = track(Budget("shapes", SHAPES_BUDGET))
        self._cache = OverLimitCache(track(Budget("over_limit", OVER_LIMIT_BUDGET)))
        self._targets: dict[tuple[str, tuple[tuple[str, str], ...], object], Target | None] = {}
        self._prepared: dict[int, Prepared] = {}  # id(request) -> its preparation (holds the request)
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
        for budget in getattr(store, "budgets", ()):
            self.metrics.track(budget)

    @property
    def config(self) -> RateLimitConfig:
        return self._config

    @config.setter
    def config(self, config: RateLimitConfig) -> None:
        """A new config applies to the next call: what was resolved under the old one is dropped, and
        so is the over-limit cache (a raised limit must not wait for the window to end)."""
        self._config, self._targets, self._prepared, self._forms = config, {}, {}, {}
        self._cache = OverLimitCache(self._cache.budget)
        for budget in (self._targets_budget, self._prepared_budget, self._forms_budget, self._cache.budget):
            budget.reset()

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings, self._prepared, self._forms = settings, {}, {}
        self._prepared_budget.reset()
        self._forms_budget.reset()

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
            roll(prepared, now)
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
                    status = Status(False, limit, part.unit, 0, end - second, part.name)
                else:
                    counters.over += 1
                    if settings.shadow_mode:
                        counters.shadow += 1
                    status = Status(True, limit, part.unit, 0, end - second, part.name)
            else:
                after = used + hits if admitted and part.charge else used
                counters.within += 1
                if after > part.near:
                    counters.near += 1
                remaining = limit - after if after < limit else 0
                status = Status(False, limit, part.unit, remaining, end - second, part.name)
            statuses[part.index] = status
            if cache is not None and part.enforce and used >= limit and not part.sliding:
                cache.add(part.slot.key, end)  # type: ignore[union-attr]
        return _decision(not admitted, statuses, settings, prepared.form)

    # preparing -------------------------------------------------------------------------------------
    def _prepare(self, request: Request) -> Prepared:
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
            parts.append(Part(
                i, target, hits, target.enforce and not shadow, target.limit, rule.unit, target.counters,
                rule.shadow_mode, target.phase == "charge", target.charge, target.sliding,
                math.floor(target.limit * near), name=rule.name,
            ))
        unlimited = tuple(
            i for i, (t, d) in enumerate(zip(targets, request.descriptors, strict=True))
            if t is None and self._unlimited(request.domain, d)
        )  # fmt: skip
        statuses = [_NO_LIMIT] * len(request.descriptors)
        for i in unlimited:  # (not `i in unlimited` per descriptor: quadratic in a hostile request)
            statuses[i] = _UNLIMITED
        blank = tuple(statuses)
        style = self._settings.response_headers
        parts_form = tuple((p.index, p.limit, p.unit, p.name) for p in parts)
        form: tuple[object, ...] = (len(blank), style, parts_form, unlimited)
        kept = self._forms.get(form)
        if kept is not None:
            form = kept
        elif self._forms_budget.admit(self._forms, _SHAPE * (1 + len(parts) + len(unlimited))):
            self._forms[form] = form
        prepared = Prepared(request, parts, blank, any(p.sliding for p in parts), form)
        config, metrics = self._config, self.metrics
        prepared.usage = usage_hits(config, metrics, request.domain, request.descriptors, default_hits)
        # what it holds: the request, and per part its Part, Slot and window keys (the base and a start)
        cost = request_bytes(request.domain, request.descriptors) + _PREPARED + sum(
            _PART + (2 if p.sliding else 1) * sizeof(p.target.base) for p in parts
        )
        if request.keep and self._prepared_budget.admit(self._prepared, cost):
            self._prepared[id(request)] = prepared
        return prepared

    def _unlimited(self, domain: str, descriptor: Descriptor) -> bool:
        if descriptor.limit is not None:
            return False
        entries, phase = _strip_phase(descriptor.entries)
        rule = self._config.match(domain, entries)
        return rule is not None and rule.unlimited and phase != "reported"

    def _target(self, domain: str, descriptor: Descriptor) -> Target | None:
        key = (domain, descriptor.entries, descriptor.limit)
        try:
            return self._targets[key]
        except KeyError:
            pass
        target = self._resolve(domain, descriptor)
        # the key holds the descriptor's strings; the target its base key (its rule and counters are
        # the config's and the metrics')
        cost = _TARGET + sizeof(domain) + entries_bytes(descriptor.entries)
        if target is not None:
            cost += sizeof(target.base)
        if self._targets_budget.admit(self._targets, cost):
            self._targets[key] = target
        return target

    def _resolve(self, domain: str, descriptor: Descriptor) -> Target | None:
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
        if rule is None or rule.unlimited or phase == "reported":
            return None
        base, tag = counter_base(domain, entries, rule.window)
        # a label made of the request's values falls back to the rule's path without them (metrics.py)
        label = rule.full_key
        fallbacks: tuple[str, ...] = ()
        if descriptor.limit is not None:  # (its keys are the request's too: then a constant)
            fallbacks = (".".join([domain, *(k for k, _ in entries)]), f"{domain}.{OVERRIDE_KEY}")
        if rule.detailed_metric:
            label, fallbacks = ".".join([domain, *(f"{k}_{v}" for k, v in entries)]), (rule.full_key,)
        return Target(
            rule, entries, phase, base, tag, self.metrics.key(domain, label, *fallbacks),
            window=rule.window,
            limit=rule.requests_per_unit,
            sliding=rule.algorithm == "sliding_window",
            enforce=not rule.shadow_mode and phase != "charge",
            charge=phase != "check",
        )


# answering --------------------------------------------------------------------------------------------
def _from_cache(prepared: Prepared, blocked: list[Part], second: int, settings: Settings) -> Decision:
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
        statuses[part.index] = Status(over, part.limit, part.unit, remaining, part.end - second, part.name)
    return _decision(True, statuses, settings, prepared.form)


def _blocked(cache: OverLimitCache, part: Part, now: float) -> bool:
    return part.enforce and part.hits > 0 and not part.sliding and cache.blocked(part.slot.key, now)  # type: ignore[union-attr]


def _decision(over: bool, statuses: Sequence[Status], settings: Settings, shape: object) -> Decision:
    return Decision(over and not settings.shadow_mode, tuple(statuses), settings.response_headers, shape)
