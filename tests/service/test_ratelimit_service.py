"""The grpc.aio servicer on port 0 with a real stub: proto in and out, errors mapped to gRPC status,
and the whole RateLimitService as `meshgate serve` builds it (policy + YAML directory, hot reload,
health components)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client import CollectorRegistry

from meshgate.health import Health
from meshgate.policy import load_policy
from meshgate.policy.store import PolicyStore
from meshgate.ratelimit import Limiter, MemoryStore, RateLimitServicer, Slot, StoreResult, StoreUnavailable
from meshgate.ratelimit.config import load_config_dir, merge_domains
from meshgate.ratelimit.metrics import RateLimitMetrics
from meshgate.ratelimit.redis_store import RedisStore
from meshgate.ratelimit.service import RateLimitService, StoreHealth
from meshgate.server import ratelimit_store

GOOD = Path(__file__).parent.parent / "fixtures" / "ratelimit" / "good"
OK, OVER = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT

POLICY = """
gateway: {ratelimit: {domain: gw, response_headers: x-ratelimit}}
tenants: [{name: acme, quotas: [user-rpm]}]
quotas: [{name: user-rpm, per: [tenant, user], limit: 2, window: minute}]
"""


def rls_request(domain: str, *descriptors: Sequence[tuple[str, str]]) -> rls_pb2.RateLimitRequest:
    pb = rls_pb2.RateLimitRequest(domain=domain)
    for entries in descriptors:
        d = pb.descriptors.add()
        for key, value in entries:
            d.entries.add(key=key, value=value)
    return pb


USER = (("quota", "user-rpm"), ("tenant", "acme"), ("user", "bob"))


class Broken:
    async def apply(self, slots: Sequence[Slot], now: float) -> StoreResult:
        raise StoreUnavailable("down")

    async def ping(self) -> None:
        raise StoreUnavailable("down")

    async def close(self) -> None:
        return None


async def serve(servicer: object) -> tuple[grpc.aio.Server, grpc.aio.Channel, rls_pb2_grpc.RateLimitServiceStub]:
    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return server, channel, rls_pb2_grpc.RateLimitServiceStub(channel)


def test_errors_map_to_grpc_status() -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        metrics = RateLimitMetrics(registry)
        limiter = Limiter(Broken(), config=merge_domains(load_config_dir(GOOD)), metrics=metrics)
        server, channel, stub = await serve(RateLimitServicer(limiter, metrics, "redis"))
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ShouldRateLimit(rls_request("compat", [("user", "x")]))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ShouldRateLimit(rls_request("compat"))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "descriptor list must not be empty" in (caught.value.details() or "")
            # a descriptor that matches no limit never touches the store
            answer = await stub.ShouldRateLimit(rls_request("compat", [("nothing", "x")]))
            assert answer.overall_code == OK
            assert registry.get_sample_value("meshgate_ratelimit_store_errors_total", {"store": "redis"}) == 1
            latency = "meshgate_ratelimit_should_rate_limit_seconds"
            assert registry.get_sample_value(f"{latency}_count") == 3  # failures are timed too
            assert registry.get_sample_value(f"{latency}_bucket", {"le": "+Inf"}) == 3
            assert (registry.get_sample_value(f"{latency}_sum") or 0) > 0
        finally:
            await channel.close()
            await server.stop(None)

    asyncio.run(main())


def test_service_from_policy_and_directory_with_hot_reload(tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY)
    limits = tmp_path / "limits"
    limits.mkdir()
    shutil.copy(GOOD / "compat.yaml", limits / "compat.yaml")

    async def main() -> None:
        registry = CollectorRegistry()
        store = PolicyStore(policy_path, registry=registry)
        store.reload()
        health = Health(registry=registry)
        service = RateLimitService(
            MemoryStore(), store_name="memory", health=health, registry=registry, config_dir=limits,
            policy_source=str(policy_path),
        )
        service.load_config_dir()  # as meshgate serve wires it (server.build_services)
        store.subscribe("ratelimit", service.prepare)
        await service.start()
        server = grpc.aio.server()
        service.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        try:
            assert health.components()["ratelimit_config"] and health.components()["ratelimit_store"]
            answers = [await stub.ShouldRateLimit(rls_request("gw", USER)) for _ in range(3)]
            assert [a.overall_code for a in answers] == [OK, OK, OVER]
            headers = {h.key: h.value for h in answers[2].response_headers_to_add}
            assert headers["X-RateLimit-Limit"] == "2" and headers["X-RateLimit-Remaining"] == "0"
            assert (await stub.ShouldRateLimit(rls_request("compat", [("path", "/admin")]))).overall_code == OK

            # the directory changes: a bad file is refused and the live config kept ...
            (limits / "broken.yaml").write_text("domain: x\ndescriptors: [{key: a, rate_limit: {unit: eon}}]\n")
            assert not service.reload_dir()
            assert (await stub.ShouldRateLimit(rls_request("compat", [("path", "/admin")]))).overall_code == OVER
            # ... a good one goes live
            (limits / "broken.yaml").write_text("domain: extra\ndescriptors: [{key: a, rate_limit: "
                                                "{unit: hour, requests_per_unit: 1}}]\n")
            assert service.reload_dir()
            extra = [await stub.ShouldRateLimit(rls_request("extra", [("a", "1")])) for _ in range(2)]
            assert [a.overall_code for a in extra] == [OK, OVER]

            # the policy changes: the new limit is live, the directory's domains stay
            policy_path.write_text(POLICY.replace("limit: 2", "limit: 50"))
            assert store.reload()
            answer = await stub.ShouldRateLimit(rls_request("gw", (*USER[:2], ("user", "new"))))
            assert answer.statuses[0].current_limit.requests_per_unit == 50
            assert (await stub.ShouldRateLimit(rls_request("extra", [("a", "1")]))).overall_code == OVER
            assert registry.get_sample_value("meshgate_ratelimit_config_loads_total", {"result": "invalid"}) == 1
        finally:
            await channel.close()
            await server.stop(None)
            await service.stop()

    asyncio.run(main())


def test_the_policy_sets_the_redis_store_and_its_pipeline_window(tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY.replace(
        "response_headers: x-ratelimit}", "response_headers: x-ratelimit, store_timeout: 80ms, "
        "store_pipeline_window: 2ms, store_pipeline_limit: 8}",
    ))
    policy = load_policy(policy_path)
    store, name = ratelimit_store("redis://127.0.0.1:1/0", policy)  # never connected here
    assert name == "redis" and isinstance(store, RedisStore) and store.timeout == 0.08
    assert store._resp is not None and (store._resp.window, store._resp.limit) == (0.002, 8)


def test_store_health_goes_down_and_up() -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        health = Health(registry=registry)
        metrics = RateLimitMetrics(registry)
        component = StoreHealth(health)
        limiter = Limiter(Broken(), metrics=metrics)
        servicer = RateLimitServicer(limiter, metrics, "memory", component)
        limiter.config = merge_domains(load_config_dir(GOOD))
        server, channel, stub = await serve(servicer)
        try:
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ShouldRateLimit(rls_request("compat", [("user", "x")]))
            assert health.components()["ratelimit_store"] is False
            limiter.store = MemoryStore()
            await stub.ShouldRateLimit(rls_request("compat", [("user", "x")]))
            assert health.components()["ratelimit_store"] is True
        finally:
            await channel.close()
            await server.stop(None)

    asyncio.run(main())
