"""Redis hung (SIGSTOP) and killed under load, against a real `meshgate serve` (its ratelimit port,
pipelined Redis connection, 50 ms store timeout, health probe) and a real redis-server.

Eight clients call ShouldRateLimit in a loop for one (tenant, user) counter. Each call is recorded
with the phase it started and ended in; the phases are moved by the test, never by time:

- while Redis is down, every call answers UNAVAILABLE, and the rate limit service's health is
  NOT_SERVING while the process-wide health (what Kubernetes probes) stays SERVING;
- once Redis is back, calls answer OK again and the service's health returns to SERVING;
- nothing is charged for a refused call: the counter in Redis equals the calls answered OK. (Before
  the fix, a hung Redis ran on resume every script that had timed out, sent on a new connection per
  timed-out call: 90 of 994 refused calls were counted.)
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import grpc
import redis
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.meshgate import Meshgate
from tests.harness.procs import eventually
from tests.harness.redis import RedisServer

SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
POLICY: dict[str, Any] = {
    "gateway": {"ratelimit": {"domain": "meshgate", "store_timeout": "50ms"}},
    "tenants": [{"name": "acme", "quotas": ["user-rph"]}],
    "quotas": [{"name": "user-rph", "per": ["tenant", "user"], "limit": 1_000_000, "window": "hour"}],
}
COUNTERS = "mg:{acme}:meshgate:quota=user-rph:tenant=acme:user=load:*"  # one per hour window
CLIENTS = 8


def _request() -> rls_pb2.RateLimitRequest:
    request = rls_pb2.RateLimitRequest(domain="meshgate")
    descriptor = request.descriptors.add()
    for key, value in (("quota", "user-rph"), ("tenant", "acme"), ("user", "load")):
        descriptor.entries.add(key=key, value=value)
    return request


class Load:
    """CLIENTS calls in flight, each recorded as (phase at start, phase at end, "OK" or a status name)."""

    def __init__(self, meshgate: Meshgate) -> None:
        self.phase = "before"
        self.calls: list[tuple[str, str, str]] = []
        self._channel = grpc.aio.insecure_channel(meshgate.address("ratelimit"))
        self._stub = rls_pb2_grpc.RateLimitServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(CLIENTS)]

    async def _client(self) -> None:
        request = _request()
        while not self._stop.is_set():
            started = self.phase
            try:
                answer = await self._stub.ShouldRateLimit(request, timeout=10)
                result = "OK" if answer.overall_code == rls_pb2.RateLimitResponse.OK else "OVER_LIMIT"
            except grpc.aio.AioRpcError as exc:
                result = exc.code().name
            self.calls.append((started, self.phase, result))

    def count(self, result: str, started: Callable[[str], bool] = lambda phase: True) -> int:
        return sum(1 for s, _, r in self.calls if r == result and started(s))

    async def health(self, service: str) -> int:
        reply = await self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)

    async def wait_health(self, service: str, status: int, timeout: float = 10.0) -> None:
        """Poll until the health of `service` is `status` (the process probes Redis every second)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.health(service) != status:
            assert loop.time() < deadline, f"health of {service!r} never became {status}"
            await asyncio.sleep(0.05)  # polling interval, not synchronisation

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._channel.close()


def _charged(server: RedisServer) -> tuple[int, int]:
    """What the counters hold, and how many scripts Redis ran (EVAL and EVALSHA)."""
    client = redis.Redis(host=server.host, port=server.port)
    try:
        stats = client.info("commandstats")
        scripts = sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("eval", "evalsha"))
        return sum(int(client.get(key) or 0) for key in client.keys(COUNTERS)), scripts
    finally:
        client.close()


def _down_calls(load: Load) -> list[str]:
    """Results of the calls that started and ended while Redis was down."""
    return [r for s, e, r in load.calls if s == e == "down"]


def test_a_hung_redis_refuses_calls_charges_none_of_them_and_recovers(
    redis_server: RedisServer, meshgate_factory: Callable[..., Meshgate]
) -> None:
    meshgate = meshgate_factory(POLICY, redis_url=redis_server.url)
    pid = redis_server.proc.pid
    assert pid is not None

    async def scenario() -> Load:
        load = Load(meshgate)
        load.start()
        try:
            await eventually(lambda: load.count("OK") >= 200, timeout=10)
            redis_server.proc.send_signal(signal.SIGSTOP)
            try:
                await load.wait_health(SERVICE, NOT_SERVING)
                load.phase = "down"
                await eventually(lambda: len(_down_calls(load)) >= 1000, timeout=15)
                assert await load.health("") == SERVING  # the pod stays ready: only ratelimit is down
                load.phase = "resuming"
            finally:
                redis_server.proc.send_signal(signal.SIGCONT)
            await eventually(lambda: load.count("OK", lambda phase: phase == "resuming") >= 200, timeout=10)
            await load.wait_health(SERVICE, SERVING)
        finally:
            await load.stop()
        return load

    load = asyncio.run(scenario())
    down = _down_calls(load)
    assert set(down) == {"UNAVAILABLE"}, f"{len(down)} calls while Redis was hung: {sorted(set(down))}"
    assert load.count("UNAVAILABLE") >= len(down) >= 1000
    charged, scripts = _charged(redis_server)
    assert charged == load.count("OK")  # no refused call was counted, then or later
    assert scripts > charged  # scripts of refused calls did run once Redis resumed: they charged nothing


def test_a_killed_redis_refuses_calls_and_a_new_one_counts_only_calls_answered_ok(
    redis_server: RedisServer, meshgate_factory: Callable[..., Meshgate]
) -> None:
    meshgate = meshgate_factory(POLICY, redis_url=redis_server.url)

    async def scenario() -> Load:
        load = Load(meshgate)
        load.start()
        try:
            await eventually(lambda: load.count("OK") >= 200, timeout=10)
            load.phase = "killed"  # from here on an OK can only come from the new Redis
            redis_server.proc.send_signal(signal.SIGKILL)
            redis_server.proc.wait_exit(10)
            await load.wait_health(SERVICE, NOT_SERVING)
            load.phase = "down"
            await eventually(lambda: len(_down_calls(load)) >= 100, timeout=10)
            assert await load.health("") == SERVING
            load.phase = "restarted"
            redis_server.start()  # same port, empty: counters start again
            await eventually(lambda: load.count("OK", lambda phase: phase == "restarted") >= 200, timeout=10)
            await load.wait_health(SERVICE, SERVING)
        finally:
            await load.stop()
        return load

    load = asyncio.run(scenario())
    down = _down_calls(load)
    assert set(down) == {"UNAVAILABLE"}, f"{len(down)} calls while Redis was dead: {sorted(set(down))}"
    assert len(down) >= 100
    assert _charged(redis_server)[0] == load.count("OK", lambda phase: phase in ("killed", "down", "restarted"))
