"""The extauthz metrics. Per-check ones are plain counts, turned into Prometheus samples at scrape time.

prometheus_client's `Counter.inc` and `Histogram.observe` take locks and run several Python calls each:
a fifth of a cached check. Checks run on the event loop thread only, so here a check adds to plain
numbers, and a scrape (from another thread) reads a copy of them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .request import Decision

__all__ = ["CheckMetrics"]

UNKNOWN_TENANT = "unknown"
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
_DECISIONS = (
    "meshgate_extauthz_decisions", "Check decisions by decision (allow, deny), code, tenant and model."
)
_LABELS = ["decision", "code", "tenant", "model"]
_LATENCY = ("meshgate_extauthz_check_seconds", "Time to decide one check, by decision cache result.")
_CACHE_BYTES = ("meshgate_extauthz_cache_bytes", "Bytes held by each extauthz cache (an estimate it keeps).")
_CACHE_BUDGET = ("meshgate_extauthz_cache_budget_bytes", "The byte budget of each extauthz cache.")
CacheSizes = Callable[[], Mapping[str, tuple[int, int]]]  # cache name -> (bytes held, byte budget)


class CheckMetrics(Collector):
    """decisions{decision, code, tenant, model}, check_seconds{cache}, cache_bytes{cache} and
    cache_budget_bytes{cache} (collected); unavailable{reason} and invalid_requests."""

    def __init__(self, registry: CollectorRegistry | None, *, caches: CacheSizes | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.errors = Counter(
            "meshgate_extauthz_unavailable",
            "Checks answered UNAVAILABLE (no decision possible).",
            ["reason"],
            registry=registry,
        )
        self.invalid = Counter(
            "meshgate_extauthz_invalid_requests",
            "Check calls whose request is not a CheckRequest (answered INVALID_ARGUMENT).",
            registry=registry,
        )
        self._caches = caches
        self.tenants: frozenset[str] = frozenset()
        self.models: frozenset[str] = frozenset()
        self._decisions: dict[tuple[str, str, str, str], int] = {}
        # per cache result: a count per bucket (the last one past every bound) and the sum of seconds
        self._buckets = {cache: [0] * (len(LATENCY_BUCKETS) + 1) for cache in ("hit", "miss")}
        self._seconds = {"hit": 0.0, "miss": 0.0}
        registry.register(self)

    def count(self, decision: Decision, tenant: str, model: str = "") -> None:
        """One decision; tenants and models outside the policy (or not known: a request refused before
        its model was read) count as "unknown" (bounded label values)."""
        key = (
            "allow" if decision.allowed else "deny",
            decision.code,
            tenant if tenant in self.tenants else UNKNOWN_TENANT,
            model if model in self.models else UNKNOWN_TENANT,
        )
        self._decisions[key] = self._decisions.get(key, 0) + 1

    def observe(self, seconds: float, *, cached: bool) -> None:
        cache = "hit" if cached else "miss"
        self._buckets[cache][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._seconds[cache] += seconds

    # --- Collector ------------------------------------------------------------------------------
    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(*_DECISIONS, labels=_LABELS)
        yield HistogramMetricFamily(*_LATENCY, labels=["cache"])
        if self._caches is not None:
            yield GaugeMetricFamily(*_CACHE_BYTES, labels=["cache"])
            yield GaugeMetricFamily(*_CACHE_BUDGET, labels=["cache"])

    def collect(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(*_DECISIONS, labels=_LABELS)
        for labels, value in list(self._decisions.items()):  # a copy: checks go on meanwhile
            decisions.add_metric(list(labels), value)
        yield decisions
        latency = HistogramMetricFamily(*_LATENCY, labels=["cache"])
        for cache, counts in self._buckets.items():
            cumulative, total = [], 0
            for bound, count in zip(
                (*map(floatToGoString, LATENCY_BUCKETS), "+Inf"), list(counts), strict=True
            ):
                total += count
                cumulative.append((bound, float(total)))
            latency.add_metric([cache], cumulative, self._seconds[cache])
        yield latency
        if self._caches is not None:
            held = GaugeMetricFamily(*_CACHE_BYTES, labels=["cache"])
            budget = GaugeMetricFamily(*_CACHE_BUDGET, labels=["cache"])
            for name, (size, limit) in sorted(self._caches().items()):
                held.add_metric([name], size)
                budget.add_metric([name], limit)
            yield held
            yield budget
