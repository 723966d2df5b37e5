"""The one loop both protocols run: read requests in a task, send what the Stream plans on each wake-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

from google.protobuf.message import Message  # type: ignore[import-untyped]

from ._stream import Step, Stream
from ._types import ORDER
from .cache import SnapshotCache
from .status import StatusBoard

__all__ = ["Handler", "Observer", "run_stream"]

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
ReqIn = TypeVar("ReqIn", bound=Message, contravariant=True)
RespOut = TypeVar("RespOut", bound=Message, covariant=True)


class Observer(Protocol):
    """Where streams report (the Prometheus metrics implement it)."""

    def connected(self, delta: int) -> None: ...

    def pushed(self, type_url: str, nbytes: int) -> None: ...

    def nacked(self, type_url: str) -> None: ...

    def converged(self, seconds: float) -> None: ...


class Handler(Protocol[ReqIn, RespOut]):
    protocol: str

    def node_of(self, request: ReqIn) -> str: ...

    def on_request(self, stream: Stream, request: ReqIn) -> None: ...

    def response(self, step: Step) -> RespOut: ...

    def payload_bytes(self, step: Step) -> int: ...


async def run_stream(
    requests: AsyncIterator[Req],
    handler: Handler[Req, Resp],
    *,
    cache: SnapshotCache,
    board: StatusBoard,
    observer: Observer,
) -> AsyncIterator[Resp]:
    wake = asyncio.Event()
    streams: list[Stream] = []
    keys: list[int] = []

    def open_stream(node: str) -> Stream:
        key, status = board.open(node, handler.protocol)
        keys.append(key)
        observer.connected(+1)
        stream = Stream(node, cache, status, on_nack=observer.nacked, on_converged=observer.converged)
        status.stream = stream
        return stream

    async def read() -> None:
        async for request in requests:
            if not streams:
                streams.append(open_stream(handler.node_of(request)))
            if request.type_url not in ORDER:
                continue  # (a type meshgate does not serve: never answered, so no state kept for it)
            handler.on_request(streams[0], request)
            wake.set()

    unwatch: Callable[[], None] = cache.watch(wake.set)
    reader = asyncio.create_task(read())
    try:
        while True:
            waiter = asyncio.create_task(wake.wait())
            done, _ = await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                waiter.cancel()
                reader.result()  # the client closed the stream (or its read failed: raise that)
                return
            wake.clear()
            if not streams:
                continue
            for step in streams[0].plan():
                streams[0].sent(step)
                observer.pushed(step.type_url, handler.payload_bytes(step))
                yield handler.response(step)
    finally:
        unwatch()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        for key in keys:
            board.close(key)
            observer.connected(-1)
