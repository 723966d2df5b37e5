"""meshgate.admin.v1.Admin: what this process has loaded and whether it is healthy.

Served on every meshgate gRPC port beside grpc.health.v1. It reads; it never changes anything.
"""

from __future__ import annotations

import grpc

from . import __version__
from ._proto import admin_pb2, admin_pb2_grpc
from .health import Health
from .policy.model import Policy
from .policy.store import PolicyStore

__all__ = ["AdminService", "status_message"]


def status_message(store: PolicyStore, health: Health) -> admin_pb2.Status:
    """The Status reply, built from plain state (testable without a server)."""
    status = admin_pb2.Status(
        policy_generation=store.generation,
        policy_source=str(store.path),
        serving=health.ok,
        version=__version__,
        components=[admin_pb2.Component(name=n, up=up) for n, up in sorted(health.components().items())],
    )
    if store.loaded:
        status.models.extend(_models(store.policy))
    return status


def _models(policy: Policy) -> list[admin_pb2.ModelStatus]:
    out = []
    for model in policy.models:
        out.append(
            admin_pb2.ModelStatus(
                name=model.name,
                protocol=model.protocol,
                visibility=model.visibility,
                shadow_version=model.shadow.version if model.shadow else "",
                shadow_percent=model.shadow.percent if model.shadow else 0.0,
                versions=[
                    admin_pb2.ModelVersionStatus(
                        name=v.name,
                        weight=v.weight or 0,
                        endpoints=list(v.endpoints)
                        or ([f"{v.kserve.service}.{v.kserve.namespace}:{v.kserve.port}"] if v.kserve else []),
                    )
                    for v in model.versions
                ],
            )
        )
    return out


class AdminService(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    grpc_names = ("meshgate.admin.v1.Admin",)

    def __init__(self, store: PolicyStore, health: Health) -> None:
        self._store = store
        self._health = health

    def add_to_server(self, server: grpc.aio.Server) -> None:
        admin_pb2_grpc.add_AdminServicer_to_server(self, server)

    async def GetStatus(
        self,
        request: admin_pb2.GetStatusRequest,
        context: grpc.aio.ServicerContext[admin_pb2.GetStatusRequest, admin_pb2.Status],
    ) -> admin_pb2.Status:
        return status_message(self._store, self._health)
