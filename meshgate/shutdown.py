"""Graceful stop of the gRPC servers: in-flight calls finish, long-lived streams end at once.

grpc.aio's `server.stop(grace)` lets calls that a handler already runs finish, but it cancels the calls
that gRPC core has received and not yet handed to Python (under load, or when SIGTERM and calls arrive
together), and it waits the whole grace for streams that never end (an ADS stream, a health Watch).
So `meshgate serve` stops in two steps (server.py):

1. `CallGate.close(grace)`: every stream handler ends now with UNAVAILABLE ("shutting down"; Envoy
   reconnects elsewhere), and the servers keep serving unary calls until none is in flight and none has
   started for `quiet` seconds (what gRPC core holds is handed over meanwhile), at most `grace`.
2. `server.stop(the grace left)`: new calls are refused (UNAVAILABLE) while any call still running
   finishes.

The gate sees every call because services register their handlers through `CallGate.server(server)`,
which wraps each handler once, at registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, cast

import grpc

__all__ = ["SHUTTING_DOWN", "CallGate"]

SHUTTING_DOWN = "meshgate is shutting down"
_Behavior = Callable[..., Any]


class CallGate:
    """Counts unary calls in flight and ends streams on `close`."""

    def __init__(self, *, quiet: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet = quiet
        self._clock = clock
        self.in_flight = 0
        self.started = 0
        """Unary calls started since the gate was made."""
        self.closing = asyncio.Event()

    def server(self, server: grpc.aio.Server) -> grpc.aio.Server:
        """`server` as services see it when they add their handlers: each handler wrapped by this gate."""
        return cast(grpc.aio.Server, _GatedServer(server, self))

    async def close(self, timeout: float, *, also: Any = None) -> float:
        """End every stream now; wait until unary calls are done and quiet, at most `timeout` seconds.
        `also`: one more server counting its calls the same way (`in_flight`, `started`: extauthz over
        HTTP). Returns the seconds left of `timeout`."""
        self.closing.set()
        deadline = self._clock() + timeout
        while True:
            seen = self.started + (also.started if also is not None else 0)
            await asyncio.sleep(max(0.0, min(self.quiet, deadline - self._clock())))
            left = deadline - self._clock()
            in_flight = self.in_flight + (also.in_flight if also is not None else 0)
            started = self.started + (also.started if also is not None else 0)
            # quiet: none in flight, none started for `quiet` (the calls gRPC holds surface by then)
            if (in_flight == 0 and started == seen) or left <= 0:
                return max(0.0, left)

    # --- handler wrappers -----------------------------------------------------------------------
    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        h: Any = handler
        if not hasattr(h, "_replace"):
            return handler
        if h.unary_unary is not None and inspect.iscoroutinefunction(h.unary_unary):
            return cast(grpc.RpcMethodHandler, h._replace(unary_unary=self._unary(h.unary_unary)))
        if h.stream_unary is not None and inspect.iscoroutinefunction(h.stream_unary):
            return cast(grpc.RpcMethodHandler, h._replace(stream_unary=self._unary(h.stream_unary)))
        if h.unary_stream is not None:
            return cast(grpc.RpcMethodHandler, h._replace(unary_stream=self._stream(h.unary_stream)))
        if h.stream_stream is not None:
            return cast(grpc.RpcMethodHandler, h._replace(stream_stream=self._stream(h.stream_stream)))
        return handler

    def _unary(self, behavior: _Behavior) -> _Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self.in_flight += 1
            self.started += 1
            try:
                return await behavior(request, context)
            finally:
                self.in_flight -= 1

        return call

    def _stream(self, behavior: _Behavior) -> _Behavior:
        if inspect.isasyncgenfunction(behavior):
            return self._generator_stream(behavior)
        if inspect.iscoroutinefunction(behavior):
            return self._writer_stream(behavior)
        return behavior  # a sync handler runs in grpc's thread pool: left as it is

    def _generator_stream(self, behavior: _Behavior) -> _Behavior:
        """An async generator handler (ADS): its items relayed until it ends or the gate closes."""
        closing = self.closing

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            if closing.is_set():
                await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            items = behavior(request, context)
            closed = asyncio.ensure_future(closing.wait())
            nxt: asyncio.Future[Any] | None = None
            try:
                while True:
                    nxt = asyncio.ensure_future(items.__anext__())
                    await asyncio.wait((nxt, closed), return_when=asyncio.FIRST_COMPLETED)
                    if not nxt.done():
                        break
                    try:
                        item = nxt.result()
                    except StopAsyncIteration:
                        return
                    nxt = None
                    yield item
            finally:
                closed.cancel()
                await _cancel(nxt)
                with contextlib.suppress(Exception):
                    await items.aclose()
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

        return stream

    def _writer_stream(self, behavior: _Behavior) -> _Behavior:
        """A coroutine handler that writes with context.write (grpc.health's Watch)."""
        closing = self.closing

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if closing.is_set():
                await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            work = asyncio.ensure_future(behavior(request, context))
            closed = asyncio.ensure_future(closing.wait())
            try:
                await asyncio.wait((work, closed), return_when=asyncio.FIRST_COMPLETED)
                if work.done():
                    return cast(None, work.result())
            finally:
                closed.cancel()
                await _cancel(work)
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

        return stream


async def _cancel(future: asyncio.Future[Any] | None) -> None:
    if future is None or future.done():
        return
    future.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await future


class _GatedServer:
    """What `add_to_server` sees: registrations go to the real server with gated handlers."""

    def __init__(self, server: grpc.aio.Server, gate: CallGate) -> None:
        self._server = server
        self._gate = gate

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service, {method: self._gate.wrap(h) for method, h in handlers.items()}
        )

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GatedGeneric(h, self._gate) for h in handlers))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _GatedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler whose handlers are gated (each wrapped once, then reused)."""

    def __init__(self, inner: grpc.GenericRpcHandler, gate: CallGate) -> None:
        self._inner = inner
        self._gate = gate
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method: str = getattr(handler_call_details, "method", "")
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, self._gate.wrap(handler))
        return known[1]
