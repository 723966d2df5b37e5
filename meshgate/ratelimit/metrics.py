"""Prometheus metrics of the rate limiter, registered on the registry the composition root hands in.

Per domain and descriptor key (`domain.key_value.key`: the config path, bounded by the config; the
request's own values only for rules with `detailed_metric: true`): total hits, within, over and
near limit, shadow-mode hits and refusals from the local over-limit cache. Plus store errors, config
loads and the latency of ShouldRateLimit.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["KeyCounters", "Latency", "RateLimitMetrics"]

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


class RateLimitMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._keys: dict[tuple[str, str], KeyCounters] = {}
        if registry is not None:
            registry.register(_KeyCollector(self._keys))
        self.store_errors = Counter(
            "meshgate_ratelimit_store_errors", "Store calls that failed (answered UNAVAILABLE).", ["store"],
            registry=registry,
        )
        self.config_loads = Counter(
            "meshgate_ratelimit_config_loads", "Rate limit config loads by result (ok, invalid).", ["result"],
            registry=registry,
        )
        self.latency = Latency(
            "meshgate_ratelimit_should_rate_limit_seconds", "ShouldRateLimit latency, store included.",
            _LATENCY_BUCKETS,
        )
        if registry is not None:
            registry.register(self.latency)

    def key(self, domain: str, key: str) -> KeyCounters:
        """The counters of (domain, key), created on first use. The keys are bounded by the config
        (values only for `detailed_metric` rules), as the label sets of the exported metrics are."""
        found = self._keys.get((domain, key))
        if found is None:
            found = self._keys[(domain, key)] = KeyCounters()
        return found
