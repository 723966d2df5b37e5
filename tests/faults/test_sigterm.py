"""SIGTERM to a `meshgate serve` with calls in flight, and with long-lived streams open.

- Calls the server has received when SIGTERM arrives all complete (no CANCELLED, no UNAVAILABLE), even
  with no drain delay: the process is stopped (SIGSTOP) while 20 calls per service reach its sockets,
  then gets SIGTERM and SIGCONT together. (Before the fix, 19 of 20 were CANCELLED: gRPC core cancels
  the calls it holds but has not handed to Python when the server stops.)
- An ADS stream and a health Watch are ended at once with UNAVAILABLE "meshgate is shutting down", so
  the process exits without waiting its (here 600 s) grace; new calls afterwards are refused
  (UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.meshgate import Meshgate
from tests.harness.procs import eventually

ROOT = Path(__file__).parents[2]
POLICY = ROOT / "examples" / "policy.yaml"
IN_FLIGHT = 20
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _check() -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "POST", "/v2/models/resnet/infer", "gateway"
    http.headers["x-api-key"] = "demo-key-acme-ci"
    return request


def _should_rate_limit() -> rls_pb2.RateLimitRequest:
    request = rls_pb2.RateLimitRequest(domain="meshgate")
    request.descriptors.add().entries.add(key="tenant", value="acme")
    return request


def _received(port: int) -> int:
    """Bytes waiting in the receive queues of the server's established sockets on `port` (Linux): what
    clients have sent that the (stopped) process has not read yet."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                total += int(queues.split(":")[1], 16)
    return total


def _stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped (SIGSTOP is delivered asynchronously)."""
    tasks = Path(f"/proc/{pid}/task")
    return all((task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for task in tasks.iterdir())


async def _outcome(call: grpc.aio.UnaryUnaryCall[object, object]) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "OK"


def test_calls_in_flight_at_sigterm_complete(meshgate_factory: Callable[..., Meshgate]) -> None:
    mg = meshgate_factory(POLICY, drain_delay=0, grace=10)

    async def scenario() -> dict[str, list[str]]:
        channels = {role: grpc.aio.insecure_channel(mg.address(role)) for role in ("extauthz", "ratelimit")}
        check = external_auth_pb2_grpc.AuthorizationStub(channels["extauthz"]).Check
        limit = rls_pb2_grpc.RateLimitServiceStub(channels["ratelimit"]).ShouldRateLimit
        try:
            await check(_check(), timeout=10)  # connected, warm
            await limit(_should_rate_limit(), timeout=10)
            mg.proc.send_signal(signal.SIGSTOP)
            assert mg.proc.pid is not None
            pid = mg.proc.pid
            await eventually(lambda: _stopped(pid), timeout=10)
            calls: dict[str, list[asyncio.Task[str]]] = {"extauthz": [], "ratelimit": []}
            try:
                for _ in range(IN_FLIGHT):
                    for role, start in (("extauthz", lambda: check(_check(), timeout=30)),
                                        ("ratelimit", lambda: limit(_should_rate_limit(), timeout=30))):
                        before = _received(mg.ports[role])
                        calls[role].append(asyncio.ensure_future(_outcome(start())))
                        # this call has reached the server's socket (and every call before it, whole)
                        await eventually(lambda: _received(mg.ports[role]) > before, timeout=10)  # noqa: B023
            finally:
                mg.proc.send_signal(signal.SIGTERM)
                mg.proc.send_signal(signal.SIGCONT)
            outcomes = {role: list(await asyncio.gather(*tasks)) for role, tasks in calls.items()}
            assert mg.proc.wait_exit(20) == 0
            after = await _outcome(check(_check(), timeout=10))
            assert after == "UNAVAILABLE", f"a call after the stop: {after}"
            return outcomes
        finally:
            for channel in channels.values():
                await channel.close()

    outcomes = asyncio.run(scenario())
    assert outcomes == {"extauthz": ["OK"] * IN_FLIGHT, "ratelimit": ["OK"] * IN_FLIGHT}
    assert "streams ended, 0 call(s) in flight" in mg.proc.tail(20)


def test_streams_end_at_once_and_do_not_hold_the_grace(meshgate_factory: Callable[..., Meshgate]) -> None:
    """grace 600 s: if a stream held the server, the process would outlive the test's 20 s wait."""
    mg = meshgate_factory(POLICY, drain_delay=0, grace=600)

    async def scenario() -> tuple[str, str]:
        channel = grpc.aio.insecure_channel(mg.address("xds"))
        hold = asyncio.Event()

        async def requests() -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
            yield discovery_pb2.DeltaDiscoveryRequest(node={"id": "sigterm-test"}, type_url=CLUSTER)
            await hold.wait()  # the stream stays open from the client's side

        try:
            ads = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(requests())
            assert (await ads.read()).type_url == CLUSTER
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            mg.proc.send_signal(signal.SIGTERM)
            ends = []
            async with asyncio.timeout(20):  # bounded: without the fix, they last the whole grace
                for stream in (ads, watch):
                    try:
                        while await stream.read() is not grpc.aio.EOF:
                            pass
                        ends.append("EOF")
                    except grpc.aio.AioRpcError as exc:
                        ends.append(f"{exc.code().name}: {exc.details()}")
            assert mg.proc.wait_exit(20) == 0
            hold.set()
            return ends[0], ends[1]
        finally:
            await channel.close()

    ads_end, watch_end = asyncio.run(scenario())
    assert ads_end == "UNAVAILABLE: meshgate is shutting down"
    assert watch_end == "UNAVAILABLE: meshgate is shutting down"
