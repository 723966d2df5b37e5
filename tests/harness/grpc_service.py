"""A meshgate `Service` (meshgate.server.Service) on a real grpc.aio server bound to 127.0.0.1:0."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2_grpc

from meshgate.health import Health
from meshgate.server import Service

__all__ = ["serving"]


@contextlib.asynccontextmanager
async def serving(service: Service, *, health: Health | None = None) -> AsyncIterator[grpc.aio.Channel]:
    """Start the service and a server for it; yield a channel to it; stop all three afterwards. With
    `health`, the server also serves grpc.health.v1 with the service's names, as meshgate serve does."""
    server = grpc.aio.server()
    if health is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
        for name in service.grpc_names:
            health.add_service(name)
    service.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await service.start()
    await server.start()
    if health is not None:
        await health.publish()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)
        await service.stop()
