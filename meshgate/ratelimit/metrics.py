"""Prometheus metrics of the rate limiter, registered on the registry the composition root hands in.

Per domain and descriptor key (`domain.key_value.key`: the config path, bounded by the config; the
request's own values only for rules with `detailed_metric: true`): total hits, within, over and
near limit, shadow-mode hits and refusals from the local over-limit cache. Plus store errors, config
loads, the latency of ShouldRateLimit, and the bytes each cache holds against its budget (bounds.py).

Per tenant and model, with names the policy declares only (others are `unknown`): the requests each
quota refused (`meshgate_ratelimit_refusals_total{domain, quota, tenant, model}`, counted by the
service: audit.py) and the chargeback counters (`meshgate_ratelimit_usage_total{kind, tenant, model}`,
the same numbers as their `total_hits` keys: usage.py).

The per-key counters are themselves bounded (`METRIC_KEYS_BUDGET`): a label made of a request's values
(detailed_metric, a limit override) longer than `LABEL_MAX` characters, or one more past the budget,
is counted under the rule's label without the values (`Limiter` hands it in as a fallback); a limit
override's keys are the request's too: past them, `OVERRIDE_KEY`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .bounds import MIB, Budget, sizeof

__all__ = [
    "LABEL_MAX",
    "METRIC_KEYS_BUDGET",
    "OVERRIDE_KEY",
    "KeyCounters",
    "Latency",
    "RateLimitMetrics",
    "Refusal",
]

Refusal = tuple[str, str, str, str]  # domain, quota, tenant, model

LABEL_MAX = 256  # characters of a `key` label made of a request's values
OVERRIDE_KEY = "limit_override"
"""The `key` label (after the domain) of a limit override's hits once its own labels are spent."""
METRIC_KEYS_BUDGET = 4 * MIB
_KEY_COST = 400  # a KeyCounters, its (domain, key) tuple and dict slot, beside the two strings

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

# KeyCounters attribute -> (metric name without the meshgate_ratelimit_ prefix, help)
_KEY_COUNTERS = {
    "total": ("total_hits", "Hits (sum of hits_addend) checked against a limit."),
    "within": ("within_limit", "Descriptors answered OK."),
    "over": ("over_limit", "Descriptors answered OVER_LIMIT."),
    "near": ("near_limit", "Descriptors answered OK above the near-limit ratio."),
    "shadow": ("shadow_mode", "Descriptors over limit but let through by shadow mode."),
    "local_cache": ("over_limit_with_local_cache", "Descriptors refused by the local over-limit cache."),
}


class KeyCounters:
    """The counters of one (domain, key): plain ints, added to on the event loop (`counters.over += 1`)
    and read by `_KeyCollector` at scrape time. A prometheus_client child costs a lock and a few
    checks per `inc()`; with five descriptors a request made a dozen of them."""

    __slots__ = tuple(_KEY_COUNTERS)

    def __init__(self) -> None:
        self.total = self.within = self.over = self.near = self.shadow = self.local_cache = 0


class _KeyCollector(Collector):
    """Exports every KeyCounters as the counters `meshgate_ratelimit_<name>_total{domain, key}`."""

    def __init__(self, keys: dict[tuple[str, str], KeyCounters]) -> None:
        self._keys = keys

    def _families(self) -> dict[str, CounterMetricFamily]:
        return {
            attr: CounterMetricFamily(f"meshgate_ratelimit_{name}", doc, labels=("domain", "key"))
            for attr, (name, doc) in _KEY_COUNTERS.items()
        }

    def describe(self) -> Iterator[Metric]:
        return iter(self._families().values())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        for (domain, key), counters in list(self._keys.items()):
            for attr, family in families.items():
                family.add_metric((domain, key), getattr(counters, attr))
        return iter(families.values())


class _LabelledCollector(Collector):
    """The refusals and the estimate charges per (domain, quota, tenant, model) and the chargeback
    counters per (kind, tenant, model): all bounded by the policy's names (the callers fold others
    into `unknown`)."""

    def __init__(
        self,
        refusals: dict[Refusal, int],
        usage: dict[tuple[str, str, str], KeyCounters],
        unreported: dict[Refusal, int],
    ) -> None:
        self._refusals, self._usage, self._unreported = refusals, usage, unreported

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                "meshgate_ratelimit_refusals",
                "Requests refused (OVER_LIMIT) by each quota, per tenant and model.",
                labels=("domain", "quota", "tenant", "model"),
            ),
            CounterMetricFamily(
                "meshgate_ratelimit_usage",
                "LLM usage the backends reported (chargeback), per kind "
                "(requests, prompt_tokens, completion_tokens), tenant and model.",
                labels=("kind", "tenant", "model"),
            ),
            CounterMetricFamily(
                "meshgate_ratelimit_usage_unreported",
                "Token quota charges of the admission estimate at "
                "stream end: responses that reported no usage, per quota, tenant and model.",
                labels=("domain", "quota", "tenant", "model"),
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        refusals, usage, unreported = self._families()
        for refusal, count in list(self._refusals.items()):
            refusals.add_metric(refusal, count)
        for labels, counters in list(self._usage.items()):
            usage.add_metric(labels, counters.total)
        for refusal, count in list(self._unreported.items()):
            unreported.add_metric(refusal, count)
        yield refusals
        yield usage
        yield unreported


class Latency(Collector):
    """A histogram observed on the event loop, exported at scrape time: `observe` is a bisect and an
    int increment (prometheus_client's Histogram takes a lock and walks its buckets in Python). The
    scrape derives `_count` from the buckets, so the two always agree."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), list(self.counts), strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, self.sum)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)


class _BudgetCollector(Collector):
    """Exports every tracked Budget: bytes held, the limit, times emptied, entries not kept."""

    def __init__(self, budgets: dict[str, Budget]) -> None:
        self._budgets = budgets

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "meshgate_ratelimit_cache_bytes",
            "Estimated bytes a rate limit cache (or the memory store's counters) holds.",
            labels=("cache",),
        )
        limit = GaugeMetricFamily(
            "meshgate_ratelimit_cache_limit_bytes", "Byte budget of a rate limit cache.", labels=("cache",)
        )
        clears = CounterMetricFamily(
            "meshgate_ratelimit_cache_clears",
            "Times a rate limit cache was emptied to stay within its budget.",
            labels=("cache",),
        )
        oversized = CounterMetricFamily(
            "meshgate_ratelimit_cache_oversized",
            "Entries not kept: larger than a cache's entry limit, "
            "or (counters) past the memory store's budget.",
            labels=("cache",),
        )
        for name, budget in sorted(self._budgets.items()):
            held.add_metric((name,), budget.used)
            limit.add_metric((name,), budget.limit)
            clears.add_metric((name,), budget.clears)
            oversized.add_metric((name,), budget.oversized)
        yield from (held, limit, clears, oversized)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families depend on what is tracked: collected, not described


class RateLimitMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._keys: dict[tuple[str, str], KeyCounters] = {}
        self.budgets: dict[str, Budget] = {}  # by cache name, exported at scrape
        self._keys_budget = self.track(Budget("metric_keys", METRIC_KEYS_BUDGET))
        self.refusals: dict[Refusal, int] = {}
        """Requests refused per (domain, quota, tenant, model): added to by the service (audit.py)."""
        self._usage: dict[tuple[str, str, str], KeyCounters] = {}
        self.unreported: dict[Refusal, int] = {}
        """Estimate charges per (domain, quota, tenant, model): added to by the service (audit.py)."""
        if registry is not None:
            registry.register(_KeyCollector(self._keys))
            registry.register(_BudgetCollector(self.budgets))
            registry.register(_LabelledCollector(self.refusals, self._usage, self.unreported))
        self.store_errors = Counter(
            "meshgate_ratelimit_store_errors",
            "Store calls that failed (answered UNAVAILABLE).",
            ["store"],
            registry=registry,
        )
        self.config_loads = Counter(
            "meshgate_ratelimit_config_loads",
            "Rate limit config loads by result (ok, invalid).",
            ["result"],
            registry=registry,
        )
        self.latency = Latency(
            "meshgate_ratelimit_should_rate_limit_seconds",
            "ShouldRateLimit latency, store included.",
            _LATENCY_BUCKETS,
        )
        if registry is not None:
            registry.register(self.latency)

    def track(self, budget: Budget) -> Budget:
        """Export `budget` (replacing one of the same name: a swapped store's)."""
        self.budgets[budget.name] = budget
        return budget

    def usage(self, counters: KeyCounters, kind: str, tenant: str, model: str) -> None:
        """Also export the chargeback `counters` (a key of the per-key counters) as
        meshgate_ratelimit_usage_total{kind, tenant, model}. Names the policy declares only (usage.py)."""
        self._usage.setdefault((kind, tenant, model), counters)

    def key(self, domain: str, key: str, *fallbacks: str | None) -> KeyCounters:
        """The counters of (domain, key), created on first use. Keys come from the config, except those
        made of a request's values (`detailed_metric`, a limit override: they pass `fallbacks`, labels
        with less of the request in them, the last one the config's or a constant), which are bounded:
        a long one, or a new one once the keys' budget is spent, is counted under the next fallback.
        Keys are never dropped (counters only go up)."""
        found = self._keys.get((domain, key))
        if found is not None:
            return found
        fallback, *rest = fallbacks or (None,)
        if fallback is not None and fallback != key:
            if len(key) > LABEL_MAX:
                self._keys_budget.oversized += 1
                return self.key(domain, fallback, *rest)
            if not self._keys_budget.take(_KEY_COST + sizeof(domain) + sizeof(key)):
                return self.key(domain, fallback, *rest)
        found = self._keys[(domain, key)] = KeyCounters()
        return found
