"""Malformed request bytes over a real gRPC channel to ADS (SotW, delta), CSDS (Fetch, Stream) and the
Admin service: INVALID_ARGUMENT with a short message, no ERROR and no traceback in the log, at most one
warning for a burst; the same server answers well-formed requests as before."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2
from prometheus_client import CollectorRegistry

from meshgate._proto import admin_pb2
from meshgate.admin import AdminService
from meshgate.health import Health
from meshgate.policy.store import PolicyStore
from meshgate.xds import XdsService
from meshgate.xds._stream import MAX_NAMES
from meshgate.xds._types import CLUSTER, ENDPOINT
from meshgate.xds._wire import LogThrottle
from tests.harness.procs import eventually
from tests.service.test_xds_ads import BARE, snap

# not a protobuf message of any type: field 15, wire type 7 (no such wire type)
GARBAGE = b"\x7f\xff\xff\xff"
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
CSDS = "/envoy.service.status.v3.ClientStatusDiscoveryService/"
ADMIN = "/meshgate.admin.v1.Admin/GetStatus"
METHODS = {
    ADS + "StreamAggregatedResources": ("stream", "envoy.service.discovery.v3.DiscoveryRequest"),
    ADS + "DeltaAggregatedResources": ("stream", "envoy.service.discovery.v3.DeltaDiscoveryRequest"),
    CSDS + "StreamClientStatus": ("stream", "envoy.service.status.v3.ClientStatusRequest"),
    CSDS + "FetchClientStatus": ("unary", "envoy.service.status.v3.ClientStatusRequest"),
    ADMIN: ("unary", "meshgate.admin.v1.GetStatusRequest"),
}


class Served:
    def __init__(self, tmp_path: Path) -> None:
        self.xds = XdsService(options=BARE, registry=CollectorRegistry(), quiet=0.0, max_delay=0.0)
        self.xds.cache.publish(snap({"v1": 100}))
        registry = CollectorRegistry()
        store = PolicyStore(tmp_path / "policy.yaml", registry=registry)
        self.admin = AdminService(store, Health(registry=registry))
        self.server = grpc.aio.server()
        self.xds.add_to_server(self.server)
        self.admin.add_to_server(self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def __aenter__(self) -> grpc.aio.Channel:
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        return self.channel

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.server.stop(None)


async def call_raw(channel: grpc.aio.Channel, method: str, *messages: bytes) -> grpc.StatusCode:
    """Send `messages` as they are (no serializer); the status the call ends with."""
    kind, _ = METHODS[method]
    try:
        if kind == "unary":
            await channel.unary_unary(method)(messages[0], timeout=10.0)
        else:
            call = channel.stream_stream(method)(iter(messages), timeout=10.0)
            async for _ in call:
                pass
    except grpc.aio.AioRpcError as err:
        assert err.details() == f"malformed {METHODS[method][1]}"
        return err.code()
    return grpc.StatusCode.OK


def no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r.getMessage() for r in caplog.records if r.exc_info or r.exc_text] == []
    assert len([r for r in caplog.records if r.name == "meshgate.grpc"]) <= 1


@pytest.mark.parametrize("method", list(METHODS), ids=lambda m: m.rsplit("/", 1)[1])
def test_malformed_bytes_are_invalid_argument(
    method: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with Served(tmp_path) as channel:
            for _ in range(5):  # a burst: one warning at most, never a traceback
                assert await call_raw(channel, method, GARBAGE) == grpc.StatusCode.INVALID_ARGUMENT

    caplog.set_level(logging.INFO)
    asyncio.run(scenario())
    no_error_logged(caplog)


def test_a_bad_message_mid_stream_ends_only_that_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A DiscoveryRequest, then garbage: the stream ends INVALID_ARGUMENT and its proxy is forgotten."""

    async def scenario() -> None:
        served = Served(tmp_path)
        async with served as channel:
            good = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=base_pb2.Node(id="gw-bad"))
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()

            async def requests() -> AsyncIterator[bytes]:
                while (item := await queue.get()) is not None:
                    yield item

            call = channel.stream_stream(ADS + "StreamAggregatedResources")(requests(), timeout=10.0)
            queue.put_nowait(good.SerializeToString())
            first = discovery_pb2.DiscoveryResponse.FromString(await call.read())
            assert first.type_url == CLUSTER and first.resources
            assert [s["node"] for s in served.xds.client_status()] == ["gw-bad"]
            queue.put_nowait(GARBAGE)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call.read()
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            await eventually(lambda: served.xds.client_status() == [])
            # the server is fine: CSDS and Admin answer well-formed requests
            fetch = channel.unary_unary(
                CSDS + "FetchClientStatus",
                request_serializer=csds_pb2.ClientStatusRequest.SerializeToString,
                response_deserializer=csds_pb2.ClientStatusResponse.FromString,
            )
            assert (await fetch(csds_pb2.ClientStatusRequest(), timeout=10.0)).config == []
            status = channel.unary_unary(
                ADMIN,
                request_serializer=admin_pb2.GetStatusRequest.SerializeToString,
                response_deserializer=admin_pb2.Status.FromString,
            )
            assert (await status(admin_pb2.GetStatusRequest(), timeout=10.0)).policy_generation == 0

    caplog.set_level(logging.INFO)
    asyncio.run(scenario())
    no_error_logged(caplog)


def test_unserved_types_keep_no_state_and_too_many_names_end_the_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A delta stream asking for 1,000 types meshgate does not serve keeps no state for them (each would
    stay for the stream's life); one subscribing to more than MAX_NAMES names ends INVALID_ARGUMENT,
    and the server answers the next stream as before."""

    async def scenario() -> None:
        served = Served(tmp_path)
        async with served as channel:
            node = base_pb2.Node(id="gw-types")
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()

            async def requests(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
                while (item := await queue.get()) is not None:
                    yield item

            def delta(type_url: str, names: list[str] | None = None) -> bytes:
                request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, node=node)
                request.resource_names_subscribe.extend(names or [])
                return bytes(request.SerializeToString())

            call = channel.stream_stream(ADS + "DeltaAggregatedResources")(requests(queue), timeout=10.0)
            for i in range(1000):
                queue.put_nowait(delta(f"type.googleapis.com/example.Unserved{i}"))
            queue.put_nowait(delta(CLUSTER))
            first = discovery_pb2.DeltaDiscoveryResponse.FromString(await call.read())
            assert first.type_url == CLUSTER and first.resources
            [status] = served.xds.board.streams()
            assert status.stream is not None and set(status.stream.types) == {CLUSTER}
            queue.put_nowait(delta(ENDPOINT, [f"c{i}" for i in range(MAX_NAMES + 1)]))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call.read()
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (
                raised.value.details()
                == f"subscribes to more than {MAX_NAMES} ClusterLoadAssignment names or 4194304 bytes of them"
            )
            await eventually(lambda: served.xds.client_status() == [])
            second: asyncio.Queue[bytes | None] = asyncio.Queue()
            again = channel.stream_stream(ADS + "DeltaAggregatedResources")(requests(second), timeout=10.0)
            second.put_nowait(delta(CLUSTER))
            assert discovery_pb2.DeltaDiscoveryResponse.FromString(await again.read()).resources
            second.put_nowait(None)

    caplog.set_level(logging.INFO)
    asyncio.run(scenario())
    no_error_logged(caplog)


def test_log_throttle_reports_once_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    throttle = LogThrottle(logging.getLogger("test.throttle"), interval=60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.throttle")
    for t in (0.0, 1.0, 2.0, 59.0, 61.0, 62.0):
        now[0] = t
        throttle.warning("bad request from %s", "peer")
    assert [r.getMessage() for r in caplog.records] == [
        "bad request from peer",
        "bad request from peer (and 3 more since the last report)",
    ]
