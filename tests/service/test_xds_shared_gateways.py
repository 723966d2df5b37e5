"""Gateways shared by meshgate replicas through a real Redis (meshgate/xds/_shared_gateways.py): each
replica's xds counts every replica's gateways in the local cluster native quotas divide by."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from meshgate.xds import XdsService
from meshgate.xds._gateways import GATEWAYS_CLUSTER, Gateways
from meshgate.xds._shared_gateways import KEY, SharedGateways
from meshgate.xds._types import ENDPOINT
from tests.harness.procs import eventually
from tests.harness.redis import RedisServer
from tests.service.test_xds_ads import BARE, run
from tests.unit.test_xds_native_quotas import native_policy


def hosts(service: XdsService) -> list[str]:
    snapshot = service.cache.current
    if snapshot is None or GATEWAYS_CLUSTER not in snapshot[ENDPOINT]:
        return []
    assignment: Any = snapshot[ENDPOINT][GATEWAYS_CLUSTER].message
    return [e.endpoint.hostname for locality in assignment.endpoints for e in locality.lb_endpoints]


def test_two_replicas_count_each_others_gateways(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(2)]
        services = [
            XdsService(options=BARE, registry=CollectorRegistry(), quiet=0.01, gateways_redis=c) for c in clients
        ]
        for service in services:
            service.prepare(native_policy())()
            await service.start()
        services[0].gateways.join("gw-a")
        services[1].gateways.join("gw-b")
        await eventually(lambda: [hosts(s) for s in services] == [["gw-a", "gw-b"]] * 2)
        services[1].gateways.leave("gw-b")  # gone from Redis at once, not after its ttl
        await eventually(lambda: [hosts(s) for s in services] == [["gw-a"]] * 2, timeout=3.0)
        for service in services:
            await service.stop()
        reader = aioredis.Redis.from_url(redis_server.url)
        assert await reader.zrange(KEY, 0, -1) == []  # a replica that stops takes its gateways out
        await reader.aclose()

    run(scenario)


def test_without_redis_the_last_view_holds_for_ttl_then_only_local_gateways(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        client, other = aioredis.Redis.from_url(redis_server.url), aioredis.Redis.from_url(redis_server.url)
        await other.zadd(KEY, {"gw-elsewhere": 2**40})  # another replica's gateway, far from expiring
        local = Gateways()
        local.join("gw-here")
        changes: list[int] = []
        shared = SharedGateways(client, local, lambda: changes.append(1), period=0.05, ttl=0.5)
        await shared.start()
        await eventually(lambda: shared.members() == ("gw-elsewhere", "gw-here"))
        redis_server.stop()
        await eventually(lambda: shared.members() == ("gw-here",), timeout=5.0)  # after ttl, not at once
        redis_server.start()  # (empty: the other replica's entry is gone with it)
        await eventually(lambda: shared.members() == ("gw-here",) and len(changes) >= 2)
        await shared.stop()
        await other.aclose()

    run(scenario)
