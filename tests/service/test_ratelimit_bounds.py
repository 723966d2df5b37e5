"""Hostile descriptor sizes through the servicer (`should_rate_limit`, as `add_to_server` registers it):
what the rate limiter keeps stays within its documented byte budgets (bounds.py), idle counters go
when their window ends, a full memory store answers UNAVAILABLE, and long values count apart with
short keys on real Redis too."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path

import grpc
import pytest
import redis
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client import CollectorRegistry

from meshgate.health import Health
from meshgate.ratelimit import Limiter, MemoryStore, RateLimitServicer, Settings
from meshgate.ratelimit.config import load_config_dir, merge_domains
from meshgate.ratelimit.metrics import RateLimitMetrics
from meshgate.ratelimit.redis_store import RedisStore
from meshgate.ratelimit.service import SERVICE_NAME, StoreHealth, add_to_server
from tests.harness.procs import eventually
from tests.harness.redis import RedisServer

GOOD = Path(__file__).parent.parent / "fixtures" / "ratelimit" / "good"  # domain compat
OK, OVER = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
MIB = 1 << 20


def raw_request(key: str, value: str) -> bytes:
    pb = rls_pb2.RateLimitRequest(domain="compat")
    pb.descriptors.add().entries.add(key=key, value=value)
    return pb.SerializeToString()


def make_servicer(store: object, registry: CollectorRegistry | None = None) -> RateLimitServicer:
    metrics = RateLimitMetrics(registry)
    limiter = Limiter(
        store,  # type: ignore[arg-type]
        config=merge_domains(load_config_dir(GOOD)),
        settings=Settings(response_headers="x-ratelimit"),
        metrics=metrics,
    )
    return RateLimitServicer(limiter, metrics, "memory")


def resident_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def budgets(registry: CollectorRegistry) -> dict[str, tuple[float, float]]:
    """(bytes held, limit) per cache, as /metrics exports them."""
    out = {}
    for metric in registry.collect():
        if metric.name == "meshgate_ratelimit_cache_bytes":
            for sample in metric.samples:
                cache = sample.labels["cache"]
                limit = registry.get_sample_value("meshgate_ratelimit_cache_limit_bytes", {"cache": cache})
                out[cache] = (sample.value, limit or 0.0)
    return out


def test_hostile_descriptor_sizes_keep_memory_within_the_budgets() -> None:
    """3000 distinct requests with one 60 KiB value (each value its own counter, as a header or path
    would give through Envoy) and 20 with 1 MiB: before, each kept ~254 KiB (+745 MiB) and 1 MiB ones
    4 MiB. Now nothing of them is cached (larger than a cache entry may be), their counters have short
    keys, and resident memory barely moves. Then 15k distinct 1 KiB requests, which are cached: every
    cache stays within its budget, emptied when full."""
    registry = CollectorRegistry()
    store = MemoryStore()
    servicer = make_servicer(store, registry)

    async def main() -> int:
        await servicer.should_rate_limit(raw_request("user", "warm-up"), None)  # type: ignore[arg-type]
        gc.collect()
        before = resident_bytes()
        for i in range(3000):
            answer = await servicer.should_rate_limit(raw_request("user", f"{i}:" + "v" * 60 * 1024), None)  # type: ignore[arg-type]
            assert rls_pb2.RateLimitResponse.FromString(answer).overall_code == OK
        for i in range(20):
            await servicer.should_rate_limit(raw_request("user", f"{i}:" + "m" * MIB), None)  # type: ignore[arg-type]
        gc.collect()
        return resident_bytes() - before

    grown = asyncio.run(main())
    assert grown < 32 * MIB, f"resident memory grew by {grown / MIB:.0f} MiB"
    assert len(store) == 3021 and max(len(key) for key in store._counts) < 100
    held = budgets(registry)
    assert {"requests", "prepared", "targets", "responses", "counters", "metric_keys"} <= set(held)
    assert all(used <= limit for used, limit in held.values()), held
    cached = sum(used for cache, (used, _) in held.items() if cache != "counters")
    assert cached < 1 * MIB  # none of the hostile requests is cached
    assert registry.get_sample_value("meshgate_ratelimit_cache_oversized_total", {"cache": "requests"}) == 3020

    async def medium() -> None:
        for i in range(15_000):
            await servicer.should_rate_limit(raw_request("user", f"{i}:" + "k" * 1024), None)  # type: ignore[arg-type]

    asyncio.run(medium())
    held = budgets(registry)
    assert all(used <= limit for used, limit in held.values()), held
    assert registry.get_sample_value("meshgate_ratelimit_cache_clears_total", {"cache": "requests"}) >= 1


def test_idle_memory_counters_go_when_their_window_ends() -> None:
    """No call after them: the memory store's timer releases the counters (and their bytes) once their
    one-second windows have ended."""
    store = MemoryStore()
    servicer = make_servicer(store)

    async def main() -> None:
        for i in range(500):
            await servicer.should_rate_limit(raw_request("per_second", f"client-{i}"), None)  # type: ignore[arg-type]
        assert len(store) == 500
        await eventually(lambda: len(store) == 0, timeout=10)
        assert store.budget.used == 0

    asyncio.run(main())


def test_a_full_memory_store_answers_unavailable_and_leaves_health_alone() -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        health = Health(registry=registry)
        store = MemoryStore(budget=4_000)
        servicer = make_servicer(store, registry)
        servicer.on_store = StoreHealth(health)
        await health.set("ratelimit_store", True, scope=SERVICE_NAME)
        server = grpc.aio.server()
        add_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)

        def request(user: str) -> rls_pb2.RateLimitRequest:
            return rls_pb2.RateLimitRequest.FromString(raw_request("user", user))

        try:
            admitted = 0
            while True:
                try:
                    await stub.ShouldRateLimit(request(f"u{admitted}"))
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE and exc.details() == "rate limit store full"
                    break
                admitted += 1
            assert 3 <= admitted < 20
            assert (await stub.ShouldRateLimit(request("u0"))).overall_code == OK  # live counters count on
            assert health.components()["ratelimit_store"] is True  # full is not down
            assert registry.get_sample_value("meshgate_ratelimit_store_errors_total", {"store": "memory"}) == 1
        finally:
            await channel.close()
            await server.stop(None)
            await store.close()

    asyncio.run(main())


def test_long_values_count_apart_under_short_keys_on_redis(redis_server: RedisServer) -> None:
    """Two 60 KiB values that differ in their last character: each its own counter (limit 3 a
    minute), in Redis under a key of a few dozen characters."""
    value = "x" * 60 * 1024 + str(time.time())

    async def main() -> list[int]:
        store = RedisStore(redis_server.url, timeout=1.0)
        servicer = make_servicer(store)
        try:
            codes = []
            for raw in [raw_request("user", value + "a")] * 4 + [raw_request("user", value + "b")]:
                answer = rls_pb2.RateLimitResponse.FromString(await servicer.should_rate_limit(raw, None))  # type: ignore[arg-type]
                codes.append(answer.overall_code)
            return codes
        finally:
            await store.close()

    assert asyncio.run(main()) == [OK, OK, OK, OVER, OK]
    keys = redis.Redis(host=redis_server.host, port=redis_server.port).keys("mg:*")
    assert len(keys) == 2 and max(len(k) for k in keys) < 100


@pytest.fixture(autouse=True)
def _collect() -> None:
    gc.collect()
