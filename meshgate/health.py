"""Health as the AND of named components, published through grpc.health.v1.

Components are things like "policy" (a policy is loaded), "ratelimit_store" (the rate-limit store
answers), "sigterm" (not shutting down). A component is either process-wide or scoped to one gRPC
service name. The overall service ("", what Kubernetes probes) is SERVING while every process-wide
component is up; a service name is SERVING while every process-wide component and every component
scoped to it are up. So Redis down makes `envoy.service.ratelimit.v3.RateLimitService` NOT_SERVING
but leaves extauthz, xds and the pod's readiness alone (ratelimit answers UNAVAILABLE and Envoy's
failure_mode_deny decides).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined,unused-ignore]
from prometheus_client import CollectorRegistry, Gauge

__all__ = ["Health"]

log = logging.getLogger("meshgate.health")

HEALTH_SERVICE = "grpc.health.v1.Health"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.servicer = health_aio.HealthServicer()
        self._components: dict[str, bool] = {}
        self._scopes: dict[str, str] = {}  # component -> service name ("" = process-wide)
        self._services: set[str] = {""}
        self._shutting_down = False
        self._gauge = Gauge(
            "meshgate_health_component_up",
            "1 when the named health component is up.",
            ["component"],
            registry=registry,
        )

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Serve grpc.health.v1 on `server`, parsing the requests here: a malformed one is
        INVALID_ARGUMENT with one throttled warning (grpc's own deserializer makes it UNKNOWN, with an
        ERROR and a traceback per call)."""
        from .xds._wire import Malformed, abort_malformed, parse, register

        servicer, request_type = self.servicer, health_pb2.HealthCheckRequest
        serialize = health_pb2.HealthCheckResponse.SerializeToString

        async def check(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                request = parse(request_type, raw)
            except Malformed as exc:
                await abort_malformed(context, "Health/Check", exc)
            return await servicer.Check(request, context)

        async def watch(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            try:
                request = parse(request_type, raw)
            except Malformed as exc:
                await abort_malformed(context, "Health/Watch", exc)
            await servicer.Watch(request, context)

        register(server, HEALTH_SERVICE, {
            "Check": grpc.unary_unary_rpc_method_handler(check, response_serializer=serialize),
            "Watch": grpc.unary_stream_rpc_method_handler(watch, response_serializer=serialize),
        })  # fmt: skip

    @property
    def ok(self) -> bool:
        """The overall status: not shutting down and every process-wide component up."""
        return self.service_ok("")

    def service_ok(self, service: str) -> bool:
        if self._shutting_down:
            return False
        return all(up for name, up in self._components.items() if self._scopes[name] in ("", service))

    def components(self) -> dict[str, bool]:
        return {**self._components, "sigterm": not self._shutting_down}

    def add_service(self, name: str) -> None:
        self._services.add(name)

    async def set(self, component: str, up: bool, *, scope: str = "") -> None:
        """Record a component's state; `scope` names the one gRPC service it concerns ("" = all)."""
        self._scopes[component] = scope
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
        for service in sorted(self._services):
            await self.servicer.set(service, SERVING if self.service_ok(service) else NOT_SERVING)

    async def shutdown(self) -> None:
        """SIGTERM: report NOT_SERVING everywhere, and keep it so."""
        self._shutting_down = True
        await self.servicer.enter_graceful_shutdown()
