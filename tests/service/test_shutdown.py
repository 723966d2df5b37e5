"""CallGate (meshgate/shutdown.py) on a real grpc.aio server: unary calls in flight finish, streams end at
once with UNAVAILABLE, the wait is bounded by the grace, and calls registered either way are seen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from meshgate.shutdown import SHUTTING_DOWN, CallGate
from tests.harness.procs import eventually

SERVICE = "test.Gate"


class _Handlers:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def slow(self, request: bytes, context: Any) -> bytes:
        await self.release.wait()
        return b"done:" + request

    async def feed(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.Event().wait()  # a stream that never ends by itself (like ADS)
        yield b"never"

    async def watch(self, request: bytes, context: Any) -> None:
        await context.write(b"status")
        await asyncio.Event().wait()  # like grpc.health's Watch


async def _serve(gate: CallGate, handlers: _Handlers, *, registered: bool) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    methods = {
        "Slow": grpc.unary_unary_rpc_method_handler(handlers.slow),
        "Feed": grpc.unary_stream_rpc_method_handler(handlers.feed),
        "Watch": grpc.unary_stream_rpc_method_handler(handlers.watch),
    }
    gated = gate.server(server)
    gated.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    if registered:
        gated.add_registered_method_handlers(SERVICE, methods)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_a_unary_call_in_flight_finishes_and_later_calls_are_refused() -> None:
    for registered in (True, False):

        async def scenario(registered: bool = registered) -> None:
            gate, handlers = CallGate(quiet=0.05), _Handlers()
            server, port = await _serve(gate, handlers, registered=registered)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            try:
                call = channel.unary_unary(f"/{SERVICE}/Slow")(b"x", timeout=10)
                await eventually(lambda: gate.in_flight == 1)
                closing = asyncio.create_task(gate.close(10))
                await eventually(gate.closing.is_set)
                assert not closing.done() and gate.in_flight == 1  # waits for the call
                handlers.release.set()
                left = await closing
                assert 0 < left <= 10 and gate.in_flight == 0
                await server.stop(left)
                assert await call == b"done:x"
                try:
                    await channel.unary_unary(f"/{SERVICE}/Slow")(b"late", timeout=5)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                else:
                    raise AssertionError("a call after the stop was served")
            finally:
                await channel.close()

        _run(scenario)


def test_streams_end_with_unavailable_when_the_gate_closes() -> None:
    async def scenario() -> None:
        gate, handlers = CallGate(quiet=0.05), _Handlers()
        server, port = await _serve(gate, handlers, registered=True)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            feed = channel.unary_stream(f"/{SERVICE}/Feed")(b"")
            watch = channel.unary_stream(f"/{SERVICE}/Watch")(b"")
            assert await feed.read() == b"first"
            assert await watch.read() == b"status"
            left = await gate.close(600)
            for stream in (feed, watch):
                try:
                    await stream.read()
                except grpc.aio.AioRpcError as exc:
                    assert (exc.code(), exc.details()) == (grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                else:
                    raise AssertionError("the stream went on")
            late = channel.unary_stream(f"/{SERVICE}/Feed")(b"")  # a stream opened while closing
            try:
                await late.read()
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
            else:
                raise AssertionError("a stream opened while closing was served")
            assert left > 0
            await server.stop(left)  # returns: no stream holds it
        finally:
            await channel.close()

    _run(scenario)


def test_the_wait_ends_with_the_grace() -> None:
    async def scenario() -> None:
        gate, handlers = CallGate(quiet=0.05), _Handlers()
        server, port = await _serve(gate, handlers, registered=True)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            call = channel.unary_unary(f"/{SERVICE}/Slow")(b"x", timeout=10)
            await eventually(lambda: gate.in_flight == 1)
            assert await gate.close(0.2) == 0.0  # a call that never ends does not hold it longer
            assert gate.in_flight == 1
            await server.stop(0)
            try:
                await call
            except grpc.aio.AioRpcError as exc:  # past the grace, gRPC ends it ("Cancelling all calls")
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            else:
                raise AssertionError("the call was answered after its server stopped")
        finally:
            await channel.close()

    _run(scenario)
