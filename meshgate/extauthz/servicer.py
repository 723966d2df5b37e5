"""Authorization/Check as grpc.aio calls it: bytes in, bytes out; a malformed request is INVALID_ARGUMENT,
a Check not decided UNAVAILABLE (Envoy's failure mode then decides; nothing fails open here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from .request import Unavailable

if TYPE_CHECKING:
    from .service import ExtAuthzService

__all__ = ["Servicer"]

_parse = external_auth_pb2.CheckRequest.FromString


class Servicer:
    """Authorization's one method, registered by ExtAuthzService.add_to_server."""

    def __init__(self, service: ExtAuthzService) -> None:
        self._service = service

    async def Check(self, raw: bytes, context: grpc.aio.ServicerContext[object, object]) -> bytes:
        try:
            request = _parse(raw)
        except DecodeError as exc:
            self._service.malformed(exc, context.peer())
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request is not a CheckRequest")
            raise AssertionError("unreachable: abort raises") from None
        error: Exception
        try:
            return await self._service.check_async(request, context)
        except Unavailable as exc:
            reason, detail, error = "unavailable", str(exc), exc
        except Exception as exc:
            reason, detail, error = "internal", "internal error", exc
        self._service.unavailable(reason, error)
        await context.abort(grpc.StatusCode.UNAVAILABLE, detail)
        raise AssertionError("unreachable: abort raises")
