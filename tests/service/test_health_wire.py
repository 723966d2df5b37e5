"""grpc.health.v1 as meshgate serves it (Health.add_to_server): good requests answered as grpc_health
does, malformed request bytes INVALID_ARGUMENT (not grpc's UNKNOWN with a traceback per call)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshgate.health import Health

BAD = b"\x7f\xff\xff\xff"  # a field header whose length runs past the end


async def _serve(health: Health) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server()
    health.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("policy", True)
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def test_good_requests_are_answered_and_malformed_ones_are_invalid_argument(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        server, channel = await _serve(Health())
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            for method in ("Check", "Watch"):
                raw = (channel.unary_unary if method == "Check" else channel.unary_stream)(
                    f"/grpc.health.v1.Health/{method}"
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    call = raw(BAD)
                    if method == "Watch":
                        await call.read()
                    else:
                        await call
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
                assert caught.value.details() == "malformed grpc.health.v1.HealthCheckRequest"
        finally:
            await channel.close()
            await server.stop(None)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a malformed request"
