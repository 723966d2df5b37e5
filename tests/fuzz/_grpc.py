"""A stand-in for grpc.aio.ServicerContext: what the servicers under fuzz call on it (peer, abort)."""

from __future__ import annotations

from typing import NoReturn

import grpc

__all__ = ["Aborted", "FakeContext"]


class Aborted(Exception):
    """What `FakeContext.abort` raises (grpc.aio raises its own AbortError there)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    def peer(self) -> str:
        return "ipv4:192.0.2.1:4242"

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise Aborted(code, details)
