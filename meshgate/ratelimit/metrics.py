"""Prometheus metrics of the rate limiter, registered on the registry the composition root hands in.

Per domain and descriptor key (`domain.key_value.key`: the config path, bounded by the config; the
request's own values only for rules with `detailed_metric: true`): total hits, within, over and
near limit, shadow-mode hits and refusals from the local over-limit cache. Plus store errors, config
loads and the latency of ShouldRateLimit.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["KeyCounters", "RateLimitMetrics"]

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class KeyCounters:
    """The counters of one (domain, key), resolved once: `labels()` is too slow for every hit."""

    __slots__ = ("local_cache", "near", "over", "shadow", "total", "within")

    def __init__(self, metrics: RateLimitMetrics, domain: str, key: str) -> None:
        self.total = metrics.total_hits.labels(domain, key)
        self.within = metrics.within_limit.labels(domain, key)
        self.over = metrics.over_limit.labels(domain, key)
        self.near = metrics.near_limit.labels(domain, key)
        self.shadow = metrics.shadow_mode.labels(domain, key)
        self.local_cache = metrics.over_limit_local_cache.labels(domain, key)


class RateLimitMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, max_keys: int = 10_000) -> None:
        labels = ["domain", "key"]

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"meshgate_ratelimit_{name}", doc, labels, registry=registry)

        self.total_hits = counter("total_hits", "Hits (sum of hits_addend) checked against a limit.")
        self.within_limit = counter("within_limit", "Descriptors answered OK.")
        self.over_limit = counter("over_limit", "Descriptors answered OVER_LIMIT.")
        self.near_limit = counter("near_limit", "Descriptors answered OK above the near-limit ratio.")
        self.shadow_mode = counter("shadow_mode", "Descriptors over limit but let through by shadow mode.")
        self.over_limit_local_cache = counter(
            "over_limit_with_local_cache", "Descriptors refused by the local over-limit cache."
        )
        self.store_errors = Counter(
            "meshgate_ratelimit_store_errors", "Store calls that failed (answered UNAVAILABLE).", ["store"],
            registry=registry,
        )
        self.config_loads = Counter(
            "meshgate_ratelimit_config_loads", "Rate limit config loads by result (ok, invalid).", ["result"],
            registry=registry,
        )
        self.latency = Histogram(
            "meshgate_ratelimit_should_rate_limit_seconds", "ShouldRateLimit latency, store included.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self._keys: dict[tuple[str, str], KeyCounters] = {}
        self._max_keys = max_keys

    def key(self, domain: str, key: str) -> KeyCounters:
        found = self._keys.get((domain, key))
        if found is None:
            found = KeyCounters(self, domain, key)
            if len(self._keys) < self._max_keys:
                self._keys[(domain, key)] = found
        return found
