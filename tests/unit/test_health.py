"""Health: the AND of named components, process-wide or scoped to one gRPC service."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from meshgate.health import Health

RLS = "envoy.service.ratelimit.v3.RateLimitService"
AUTHZ = "envoy.service.auth.v3.Authorization"


def test_scoped_component_affects_only_its_service() -> None:
    health = Health(registry=CollectorRegistry())

    async def scenario() -> None:
        health.add_service(RLS)
        health.add_service(AUTHZ)
        await health.set("policy", True)
        await health.set("ratelimit_store", False, scope=RLS)

    asyncio.run(scenario())
    assert health.ok is True
    assert health.service_ok(AUTHZ) is True
    assert health.service_ok(RLS) is False
    assert health.components() == {"policy": True, "ratelimit_store": False, "sigterm": True}


def test_process_wide_component_and_shutdown_affect_everything() -> None:
    health = Health(registry=CollectorRegistry())

    async def scenario() -> None:
        await health.set("policy", False)

    asyncio.run(scenario())
    assert health.ok is False and health.service_ok(AUTHZ) is False

    asyncio.run(health.set("policy", True))
    assert health.ok is True
    asyncio.run(health.shutdown())
    assert health.ok is False and health.service_ok(RLS) is False
    assert health.components()["sigterm"] is False
