"""meshgate.admin.v1.Admin: what this process has loaded and whether it is healthy.

Served on every meshgate gRPC port beside grpc.health.v1. It reads; it never changes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from . import __version__
from ._proto import admin_pb2
from .health import Health
from .models import EndpointHealth, EndpointKey, EndpointState, Readiness, version_endpoints
from .policy.model import ModelVersion, Policy
from .policy.store import PolicyStore
from .xds._wire import Malformed, abort_malformed, parse, register

__all__ = ["AdminService", "status_message"]


def status_message(
    store: PolicyStore, health: Health, readiness: Readiness | None = None
) -> admin_pb2.Status:
    """The Status reply, built from plain state (testable without a server).

    With `readiness` (the model prober), each version lists the health of its probed endpoints.
    """
    status = admin_pb2.Status(
        policy_generation=store.generation,
        policy_source=str(store.path),
        serving=health.ok,
        version=__version__,
        components=[admin_pb2.Component(name=n, up=up) for n, up in sorted(health.components().items())],
    )
    if store.loaded:
        status.models.extend(_models(store.policy, readiness.snapshot() if readiness else {}))
    return status


_HEALTH = {
    EndpointHealth.UNKNOWN: admin_pb2.ENDPOINT_HEALTH_UNKNOWN,
    EndpointHealth.HEALTHY: admin_pb2.ENDPOINT_HEALTH_HEALTHY,
    EndpointHealth.UNHEALTHY: admin_pb2.ENDPOINT_HEALTH_UNHEALTHY,
}


def _endpoint_health(
    model: str, version: ModelVersion, states: Mapping[EndpointKey, EndpointState]
) -> list[admin_pb2.EndpointStatus]:
    out = []
    for endpoint in version_endpoints(version):
        state = states.get(EndpointKey(model, version.name, endpoint))
        if state is not None:
            out.append(
                admin_pb2.EndpointStatus(
                    endpoint=endpoint,
                    health=_HEALTH[state.health],
                    detail=state.detail,
                    consecutive_failures=state.failures,
                    consecutive_successes=state.successes,
                )
            )
    return out


def _models(policy: Policy, states: Mapping[EndpointKey, EndpointState]) -> list[admin_pb2.ModelStatus]:
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
                        endpoint_health=_endpoint_health(model.name, v, states),
                    )
                    for v in model.versions
                ],
            )
        )
    return out


class AdminService:
    """meshgate.admin.v1.Admin over request bytes: a malformed request is INVALID_ARGUMENT."""

    grpc_names = ("meshgate.admin.v1.Admin",)

    def __init__(self, store: PolicyStore, health: Health, readiness: Readiness | None = None) -> None:
        self._store = store
        self._health = health
        self._readiness = readiness

    def add_to_server(self, server: grpc.aio.Server) -> None:
        register(server, self.grpc_names[0], {
            "GetStatus": grpc.unary_unary_rpc_method_handler(
                self.GetStatus, response_serializer=admin_pb2.Status.SerializeToString
            )
        })  # fmt: skip

    async def GetStatus(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> admin_pb2.Status:
        try:
            parse(admin_pb2.GetStatusRequest, raw)
        except Malformed as exc:
            await abort_malformed(context, "GetStatus", exc)
        return status_message(self._store, self._health, self._readiness)
