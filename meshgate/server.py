"""The composition root of `meshgate serve`: one process, every service, wired in one place.

Nothing here runs at import time. `run(config)` loads the policy, builds the services, binds the
gRPC servers (services sharing an address share a server), the health service and /metrics,
then serves until SIGTERM/SIGINT: health goes NOT_SERVING first, then the servers drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server

from .admin import AdminService
from .health import Health
from .models import Prober, Readiness
from .policy.errors import PolicyError
from .policy.load import load_policy
from .policy.store import PolicyStore
from .tls import ServerTLS, server_credentials

__all__ = ["Context", "ServeConfig", "Service", "run"]

log = logging.getLogger("meshgate.server")

ROLES = ("extauthz", "ratelimit", "xds")


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    policy: Path
    listen: dict[str, str] = field(
        default_factory=lambda: {
            "extauthz": "0.0.0.0:9001",
            "ratelimit": "0.0.0.0:9002",
            "xds": "0.0.0.0:18000",
        }
    )
    metrics: str = "0.0.0.0:9090"
    ready_file: Path | None = None
    watch: bool = True
    drain_delay: float = 2.0
    grace: float = 10.0
    redis_url: str | None = None
    event_loop: str = "auto"
    """`auto` (uvloop when installed), `uvloop` or `asyncio`: see `loop_factory`."""
    tls: ServerTLS | None = None
    """TLS (and mTLS with a client CA) on the xds port, the one gateways reach from elsewhere; None:
    plaintext. extauthz and ratelimit stay plaintext for the gateway's Envoy, inside the mesh or behind
    the NetworkPolicy."""
    ratelimit_config: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Context:
    """What every service gets: the config, the live policy, health and the metrics registry."""

    config: ServeConfig
    policy: PolicyStore
    health: Health
    registry: CollectorRegistry
    ports: Mapping[str, int] = field(default_factory=dict)
    """The gRPC ports actually bound, by role (port 0 in the config resolved)."""

    def address(self, role: str) -> str:
        """`host:port` of a role's gRPC server as a local peer reaches it (0.0.0.0 read as 127.0.0.1)."""
        host = _split(self.config.listen[role])[0]
        return f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{self.ports[role]}"


class Service(Protocol):
    """One gRPC service. `grpc_names` are the full service names, published in grpc.health.v1."""

    grpc_names: tuple[str, ...]

    def add_to_server(self, server: grpc.aio.Server) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_services(ctx: Context) -> dict[str, list[Service]]:
    """Which services run under each role. Each role's package adds its own here."""
    from .extauthz import ExtAuthzService

    services: dict[str, list[Service]] = {role: [] for role in ROLES}
    # model readiness probes: a background component (no gRPC service of its own, grpc_names == ()),
    # started and stopped with the services; admin shows its state, xds marks EDS endpoints with it.
    prober = Prober(ctx.policy, registry=ctx.registry)
    services["xds"].append(prober)
    services["extauthz"].append(ExtAuthzService(ctx.policy, registry=ctx.registry))
    from .ratelimit import RateLimitService

    services["ratelimit"].append(RateLimitService(ctx))
    from .xds import build_xds_service

    services["xds"].append(build_xds_service(ctx, readiness=prober))
    return services


def _readiness(services: dict[str, list[Service]]) -> Readiness | None:
    """The model prober among the services, for the admin API (None when none runs)."""
    return next((s for role in ROLES for s in services[role] if isinstance(s, Prober)), None)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def _listen(config: ServeConfig) -> tuple[list[tuple[grpc.aio.Server, list[str]]], dict[str, int]]:
    """Bind one grpc.aio server per distinct address (port 0: one each), before any service exists,
    so services (xds) can be built knowing where the others really listen."""
    by_address: dict[tuple[str, str], list[str]] = {}
    for role in ROLES:
        address = config.listen[role]
        key = (address, role if _split(address)[1] == 0 else "")
        by_address.setdefault(key, []).append(role)
    credentials = server_credentials(config.tls) if config.tls else None
    servers, ports = [], {}
    for (address, _), roles in by_address.items():
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        if credentials is not None and "xds" in roles:
            if roles != ["xds"]:
                raise OSError(f"with TLS, xds needs an address of its own ({address} is shared with {roles})")
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        servers.append((server, roles))
        for role in roles:
            ports[role] = port
    return servers, ports


async def _start(
    ctx: Context, servers: list[tuple[grpc.aio.Server, list[str]]], services: dict[str, list[Service]]
) -> None:
    """Add health, admin and each role's services to its server, then start serving."""
    for server, roles in servers:
        health_pb2_grpc.add_HealthServicer_to_server(ctx.health.servicer, server)
        AdminService(ctx.policy, ctx.health, _readiness(services)).add_to_server(server)
        for role in roles:
            for service in services[role]:
                service.add_to_server(server)
                for name in service.grpc_names:
                    ctx.health.add_service(name)
        await server.start()
        for role in roles:
            log.info("%s listening on %s:%d", role, _split(ctx.config.listen[role])[0], ctx.ports[role])


def _write_ready_file(path: Path, ports: dict[str, int]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**ports, "pid": os.getpid()}))
    tmp.replace(path)


async def run(config: ServeConfig) -> int:
    """Serve until a signal. Returns the process exit code."""
    registry = CollectorRegistry()
    store = PolicyStore(config.policy, registry=registry)
    try:
        first = load_policy(config.policy)
    except PolicyError as exc:
        for issue in exc.issues:
            log.error("%s", issue)
        return 1
    health = Health(registry=registry)
    try:
        servers, bound = _listen(config)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    ctx = Context(config=config, policy=store, health=health, registry=registry, ports=bound)
    services = build_services(ctx)
    store.apply(first)
    await health.set("policy", store.loaded)

    every = [s for role in ROLES for s in services[role]]
    for service in every:
        await service.start()
    await _start(ctx, servers, services)
    ports = dict(bound)
    # everything built so far lives as long as the process: keep it out of the cyclic GC's scans
    # (measured: about half of the 5 µs per check the collector cost extauthz)
    gc.freeze()
    host, port = _split(config.metrics)
    metrics_server, _ = start_http_server(port, addr=host, registry=registry)
    ports["metrics"] = metrics_server.server_port
    log.info("metrics listening on %s:%d", host, ports["metrics"])
    await health.publish()

    stop = asyncio.Event()
    _install_signals(stop, store)
    watcher = asyncio.create_task(store.watch(stop)) if config.watch else None
    if config.ready_file is not None:
        _write_ready_file(config.ready_file, ports)
    log.info("meshgate serving policy generation %d", store.generation)

    await stop.wait()
    log.info("stopping: NOT_SERVING, draining for %.1fs, then %.1fs grace", config.drain_delay, config.grace)
    await health.shutdown()
    await asyncio.sleep(config.drain_delay)
    await asyncio.gather(*(server.stop(config.grace) for server, _ in servers))
    for service in reversed(every):
        await service.stop()
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    metrics_server.shutdown()
    log.info("stopped")
    return 0


def _install_signals(stop: asyncio.Event, store: PolicyStore) -> None:
    loop = asyncio.get_running_loop()
    handlers: dict[signal.Signals, Callable[[], object]] = {
        signal.SIGTERM: stop.set,
        signal.SIGINT: stop.set,
        signal.SIGHUP: store.reload,
    }
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `meshgate serve` runs on: `uvloop`, `asyncio` (None: the standard library's) or
    `auto` (uvloop when it can be imported). uvloop runs the same services ~10 % faster (grpc.aio's
    callbacks, the Redis connection and the HTTP clients all sit on the loop)."""
    if name not in ("auto", "uvloop", "asyncio"):
        raise SystemExit(f"meshgate serve: unknown event loop {name!r} (auto, uvloop or asyncio)")
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise SystemExit("meshgate serve: --event-loop uvloop, but uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(config: ServeConfig) -> int:
    factory = loop_factory(config.event_loop)
    log.info("event loop: %s", "uvloop" if factory is not None else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run(config))
