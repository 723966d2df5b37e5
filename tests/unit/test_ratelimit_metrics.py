"""The latency histogram meshgate keeps itself (observed on the event loop, exported at scrape)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from meshgate.ratelimit.metrics import Latency


def test_buckets_are_cumulative_with_prometheus_le_semantics() -> None:
    registry = CollectorRegistry()
    latency = Latency("t_seconds", "test", (0.001, 0.01))
    registry.register(latency)
    for seconds in (0.0005, 0.001, 0.002, 0.01, 0.5):  # a value equal to a bound falls in that bucket
        latency.observe(seconds)

    def sample(suffix: str, le: str | None = None) -> float | None:
        return registry.get_sample_value(f"t_seconds_{suffix}", {"le": le} if le else {})

    assert [sample("bucket", le) for le in ("0.001", "0.01", "+Inf")] == [2, 4, 5]
    assert sample("count") == 5
    assert sample("sum") == pytest.approx(0.5135)
