"""Requests parsed by meshgate, not by grpc: a malformed message is INVALID_ARGUMENT with a short message.

grpc's own request deserializer raising DecodeError makes the call UNKNOWN ("Unexpected DecodeError")
and logs an ERROR with a traceback per call. The services here register their methods with no request
deserializer (`handler(...)`), parse the bytes themselves (`parse`, `parsed` for a request stream), and
answer `Malformed` with `abort_malformed`: INVALID_ARGUMENT, one log line per interval at most.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message  # type: ignore[import-untyped]

__all__ = ["LogThrottle", "Malformed", "abort_malformed", "parse", "parsed", "register"]

M = TypeVar("M", bound=Message)
log = logging.getLogger("meshgate.grpc")


class Malformed(Exception):
    """The bytes of a request are not a valid message of its type."""

    def __init__(self, type_name: str) -> None:
        super().__init__(f"malformed {type_name}")


def parse(message_type: type[M], raw: bytes) -> M:
    try:
        message: M = message_type.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:  # upb raises DecodeError; be wide on purpose
        raise Malformed(message_type.DESCRIPTOR.full_name) from exc
    return message


async def parsed(message_type: type[M], requests: AsyncIterator[bytes]) -> AsyncIterator[M]:
    """A request stream of bytes as messages; raises Malformed at the first bad one."""
    async for raw in requests:
        yield parse(message_type, raw)


class LogThrottle:
    """At most one warning per `interval` seconds; the next one counts those left out in between."""

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log, self._interval, self._clock = logger, interval, clock
        self._next = float("-inf")
        self._skipped = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next:
            self._skipped += 1
            return
        if self._skipped:
            message += " (and %d more since the last report)"
            args = (*args, self._skipped)
        self._log.warning(message, *args)
        self._next, self._skipped = now + self._interval, 0


_throttle = LogThrottle(log)


async def abort_malformed(
    context: grpc.aio.ServicerContext[Any, Any], method: str, error: Malformed
) -> NoReturn:
    """INVALID_ARGUMENT with the error's short message; a throttled warning naming the method and peer."""
    _throttle.warning("%s from %s: %s", method, context.peer(), error)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def register(server: grpc.aio.Server, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
    """Add `handlers` (method name -> handler) under `service`, as the generated add_*_to_server does."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, dict(handlers)),))
    server.add_registered_method_handlers(service, dict(handlers))
