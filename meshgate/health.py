"""Health as the AND of named components, published through grpc.health.v1.

Components are things like "policy" (a policy is loaded), "store" (the rate-limit store answers),
"sigterm" (not shutting down). The overall service ("") and every registered gRPC service name are
SERVING only while every component is up.
"""

from __future__ import annotations

import logging

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry, Gauge

__all__ = ["Health"]

log = logging.getLogger("meshgate.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.servicer = health_aio.HealthServicer()
        self._components: dict[str, bool] = {}
        self._services: set[str] = {""}
        self._shutting_down = False
        self._gauge = Gauge(
            "meshgate_health_component_up",
            "1 when the named health component is up.",
            ["component"],
            registry=registry,
        )

    @property
    def ok(self) -> bool:
        return not self._shutting_down and all(self._components.values())

    def components(self) -> dict[str, bool]:
        return {**self._components, "sigterm": not self._shutting_down}

    def add_service(self, name: str) -> None:
        self._services.add(name)

    async def set(self, component: str, up: bool) -> None:
        if self._components.get(component) != up:
            log.log(
                logging.INFO if up else logging.WARNING,
                "health component %s is %s",
                component,
                "up" if up else "down",
            )
        self._components[component] = up
        self._gauge.labels(component).set(1 if up else 0)
        await self.publish()

    async def publish(self) -> None:
        status = SERVING if self.ok else NOT_SERVING
        for service in sorted(self._services):
            await self.servicer.set(service, status)

    async def shutdown(self) -> None:
        """SIGTERM: report NOT_SERVING everywhere, and keep it so."""
        self._shutting_down = True
        await self.servicer.enter_graceful_shutdown()
