"""The inference protocol's server-level calls, answered for the gateway.

A client of the Open Inference Protocol (tritonclient, KServe's InferenceClient) talks to the gateway as
to one inference server: before it infers it asks whether "the server" is live and ready, and what it
is. Behind the gateway there are many servers (one per model version), so the gateway answers these
itself; a model's own readiness (`/v2/models/{m}/ready`, gRPC ModelReady) goes to the model's backend.

- REST `/v2/health/live`, `/v2/health/ready`, `/v2`: Envoy's direct responses (xds `_server.py`).
- gRPC `inference.GRPCInferenceService/ServerLive|ServerReady|ServerMetadata`: routed by the gateway to
  this service, on meshgate's extauthz port (where the gateway already reaches meshgate). Live: always
  (it answers); ready: meshgate's overall health (a policy loaded, not shutting down).

Which of them need credentials is the policy's `gateway.public_server_api` (docs/models.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from meshgate import __version__
from meshgate.xds._wire import Malformed, abort_malformed, parse, register

__all__ = ["SERVER_METADATA", "SERVICE", "ServerApi"]

SERVICE = "inference.GRPCInferenceService"
SERVER_METADATA = {"name": "meshgate", "version": __version__, "extensions": []}
"""What the gateway says it is (REST `/v2` and gRPC ServerMetadata): no protocol extension is
promised for the gateway as a whole; each model's backend has its own."""


class ServerApi:
    """ServerLive / ServerReady / ServerMetadata of `inference.GRPCInferenceService` (Service-shaped:
    added to the extauthz role's gRPC server; nothing to start). `ready` is read on every call."""

    grpc_names: tuple[str, ...] = ()  # not a meshgate service of its own in grpc.health.v1

    def __init__(self, *, ready: Callable[[], bool]) -> None:
        self._ready = ready

    def add_to_server(self, server: grpc.aio.Server) -> None:
        from tritonclient.grpc import service_pb2 as pb  # (imported where meshgate serves, like target.py)

        def unary(name: str, request: Any, answer: Callable[[], Any]) -> grpc.RpcMethodHandler:
            async def call(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
                try:
                    parse(request, raw)
                except Malformed as exc:
                    await abort_malformed(context, f"{SERVICE}/{name}", exc)
                return bytes(answer().SerializeToString())

            return grpc.unary_unary_rpc_method_handler(call)

        handlers = {
            "ServerLive": unary("ServerLive", pb.ServerLiveRequest, lambda: pb.ServerLiveResponse(live=True)),
            "ServerReady": unary(
                "ServerReady", pb.ServerReadyRequest, lambda: pb.ServerReadyResponse(ready=self._ready())
            ),
            "ServerMetadata": unary(
                "ServerMetadata",
                pb.ServerMetadataRequest,
                lambda: pb.ServerMetadataResponse(
                    name=SERVER_METADATA["name"], version=SERVER_METADATA["version"], extensions=[]
                ),
            ),
        }
        register(server, SERVICE, handlers)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
