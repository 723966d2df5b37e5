"""A meshgate `Service` (meshgate.server.Service) on a real grpc.aio server bound to 127.0.0.1:0."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from meshgate.server import Service

__all__ = ["serving"]


@contextlib.asynccontextmanager
async def serving(service: Service) -> AsyncIterator[grpc.aio.Channel]:
    """Start the service and a server for it; yield a channel to it; stop all three afterwards."""
    server = grpc.aio.server()
    service.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await service.start()
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)
        await service.stop()
