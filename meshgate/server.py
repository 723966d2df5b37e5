"""The composition root of `meshgate serve`: one process, every service, wired in one place.

Nothing here runs at import time. `run(config)` reads the policy, binds the gRPC servers (services
sharing an address share a server), builds and connects every service (`build_services`: each gets
what it uses as constructor arguments), compiles the first policy (a policy that does not compile
is an error at start: exit 1), then serves until SIGTERM/SIGINT. Changes to the policy file, the
ratelimit config directory and the certificate files go through one reload pipeline
(meshgate/policy/watch.py). Stopping: health goes NOT_SERVING, the drain delay passes, streams end
and in-flight calls finish within the grace (meshgate/shutdown.py).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from . import tracing
from ._listen import (
    ROLES,
    bind_socket,
    check_ready_file,
    listen,
    local_address,
    metrics_server,
    split_address,
    write_ready_file,
)
from .admin import AdminService, live_operations
from .extauthz import ExtAuthzService
from .extauthz.http import HttpCheckServer
from .health import Health
from .models import Prober
from .models.server_api import ServerApi
from .policy.errors import Issue, PolicyError
from .policy.load import parse_policy_bytes
from .policy.model import Policy
from .policy.store import CompileError, PolicyStore
from .policy.watch import DEFAULT_RESYNC, DEFAULT_SETTLE, FilesInput, Input, Paths, Reloader
from .ratelimit.admission import Admission
from .ratelimit.config import ConfigError
from .ratelimit.service import RateLimitService
from .ratelimit.store import MemoryStore, Store
from .shutdown import CallGate
from .tls import ServerTLS
from .xds import XdsService, options_from_env

__all__ = [
    "ServeConfig",
    "Service",
    "Wiring",
    "build_services",
    "certificates_input",
    "ratelimit_config_input",
    "ratelimit_store",
    "run",
]

log = logging.getLogger("meshgate.server")

HTTP_ROLE = "extauthz_http"
"""extauthz over HTTP (extauthz/http.py): its own port, not a gRPC server's."""
Servers = list[tuple[grpc.aio.Server, list[str]]]


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    policy: Path
    listen: dict[str, str] = field(
        default_factory=lambda: {
            "extauthz": "0.0.0.0:9001",
            "extauthz_http": "0.0.0.0:9003",
            "ratelimit": "0.0.0.0:9002",
            "xds": "0.0.0.0:18000",
        }
    )
    metrics: str = "0.0.0.0:9090"
    ready_file: Path | None = None
    watch: bool = True
    reload_settle: float = DEFAULT_SETTLE
    """Seconds a changed input (policy, ratelimit directory, certificates) must read the same before it
    is parsed: see meshgate/policy/watch.py and docs/policy.md."""
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


class Service(Protocol):
    """One gRPC service. `grpc_names` are the full service names, published in grpc.health.v1."""

    grpc_names: tuple[str, ...]

    def add_to_server(self, server: grpc.aio.Server) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Wiring:
    """Every service of the process, connected: what `build_services` returns."""

    roles: dict[str, list[Service]]
    """The services that run under each role (added to that role's gRPC server)."""
    prober: Prober
    extauthz: ExtAuthzService
    ratelimit: RateLimitService
    xds: XdsService
    inputs: list[Input]
    """The reload pipeline's inputs, in the order a reload processes them (the policy first)."""

    def every(self) -> list[Service]:
        return [service for role in ROLES for service in self.roles[role]]


def ratelimit_store(redis_url: str | None, policy: Policy) -> tuple[Store, str]:
    """The rate limiter's counters: in memory, or in Redis with the policy's timeout and pipelining."""
    if not redis_url:
        return MemoryStore(), "memory"
    from .ratelimit.redis_store import RedisStore

    rl = policy.gateway.ratelimit
    store = RedisStore(
        redis_url,
        timeout=rl.store_timeout,
        pipeline_window=rl.store_pipeline_window,
        pipeline_limit=rl.store_pipeline_limit,
    )
    log.info("ratelimit counters in %r", store)
    return store, "redis"


def gateways_redis(redis_url: str | None) -> Any:
    """With `--redis-url`, the client through which the xds replicas share their gateways (the count
    native quotas divide by, docs/native.md); without, each replica counts its own."""
    if not redis_url:
        return None
    from .ratelimit.redis_store import _client  # (the same URL forms as the counters' store)

    return _client(redis_url, timeout=1.0)


def build_services(
    config: ServeConfig,
    *,
    ports: Mapping[str, int],
    first: Policy,
    policies: PolicyStore,
    health: Health,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider | None = None,
) -> Wiring:
    """The composition root: each service gets what it uses, and is subscribed to the policy store.
    `first` (the policy `meshgate serve` starts with) decides the counter store's settings; `ports`
    (bound before any service exists) tell xds where the gateway reaches extauthz and ratelimit;
    `tracer_provider` (meshgate/tracing.py, None: off) makes each service's spans."""
    # model readiness probes: a background component (no gRPC service of its own), started and stopped
    # with the services; admin shows its state, xds marks EDS endpoints with it.
    prober = Prober(policies, registry=registry)
    traced = tracer_provider
    extauthz = ExtAuthzService(policies, registry=registry, health=health, tracer_provider=traced)
    store, store_name = ratelimit_store(config.redis_url, first)
    ratelimit = RateLimitService(
        store,
        store_name=store_name,
        health=health,
        registry=registry,
        config_dir=config.ratelimit_config,
        policy_source=str(config.policy),
        tracer_provider=traced,
    )
    policies.subscribe("ratelimit", ratelimit.prepare)
    extauthz.admission = Admission(ratelimit.servicer)  # (gateway.ratelimit.admission: extauthz)
    listen = {
        role: local_address(config.listen[role], ports[role])
        for role in ("extauthz", "ratelimit", HTTP_ROLE)
        if role in ports
    }
    options = options_from_env(listen, dict(os.environ))
    xds = XdsService(
        options=options, registry=registry, readiness=prober, tracer_provider=traced,
        gateways_redis=gateways_redis(config.redis_url),
    )  # fmt: skip
    policies.subscribe("xds", xds.prepare)
    inputs: list[Input] = [policies]
    if config.ratelimit_config is not None:
        inputs.append(ratelimit_config_input(ratelimit, config.ratelimit_config))
    inputs.append(certificates_input(xds))
    # the inference protocol's server-level gRPC calls, which the gateway routes to the extauthz port
    server_api = ServerApi(ready=lambda: health.ok)
    roles: dict[str, list[Service]] = {
        "extauthz": [extauthz, server_api],
        "ratelimit": [ratelimit],
        "xds": [prober, xds],
    }
    return Wiring(roles=roles, prober=prober, extauthz=extauthz, ratelimit=ratelimit, xds=xds, inputs=inputs)


def ratelimit_config_input(ratelimit: RateLimitService, directory: Path) -> Input:
    """The envoyproxy/ratelimit YAML directory as an input of the reload pipeline."""
    paths = Paths.of(directories=[directory])
    return FilesInput("ratelimit-config", lambda: paths, ratelimit.prepare_config_dir)


def certificates_input(xds: XdsService) -> Input:
    """The certificate files the live policy names (SDS) as an input of the reload pipeline."""
    return FilesInput(
        "certificates", lambda: Paths.of(files=xds.certificate_paths()), xds.prepare_certificates
    )


async def _start(
    servers: Servers,
    wiring: Wiring,
    *,
    config: ServeConfig,
    ports: Mapping[str, int],
    policies: PolicyStore,
    health: Health,
    gate: CallGate,
) -> None:
    """Add health, admin and each role's services to its server (through the gate), then serve."""
    for server, roles in servers:
        gated = gate.server(server)
        health.add_to_server(gated)
        ops = live_operations(policies, wiring.extauthz, wiring.xds, wiring.ratelimit)
        AdminService(policies, health, wiring.prober, ops).add_to_server(gated)
        for role in roles:
            for service in wiring.roles[role]:
                service.add_to_server(gated)
                for name in service.grpc_names:
                    health.add_service(name)
        await server.start()
        for role in roles:
            log.info("%s listening on %s:%d", role, split_address(config.listen[role])[0], ports[role])


def _first_policy(policies: PolicyStore) -> tuple[Policy, str]:
    """The policy to start with, and the digest of its bytes. Raises PolicyError."""
    state = policies.read()
    if state.data is None:
        raise PolicyError([Issue(str(policies.path), 0, "<file>", f"cannot read: {state.error}")])
    return parse_policy_bytes(state.data, str(policies.path)), hashlib.sha256(state.data).hexdigest()


async def _compile_first(wiring: Wiring, policies: PolicyStore, first: Policy, digest: str) -> bool:
    """The ratelimit directory, then the first policy, compiled and made live before anything serves.
    False (logged, exit 1) if either is refused: meshgate never serves without a compiled policy."""
    try:
        wiring.ratelimit.load_config_dir()
    except ConfigError as exc:
        for issue in exc.issues:
            log.error("cannot start: ratelimit config rejected: %s", issue)
        return False
    try:
        commit = await asyncio.to_thread(policies.prepare, first, digest=digest)
    except CompileError as exc:
        log.error("cannot start: policy %s is valid but %s", policies.path, exc)
        log.debug("the compile error in full", exc_info=exc.cause)
        return False
    commit()
    return True


async def run(config: ServeConfig) -> int:
    """Serve until a signal. Returns the process exit code."""
    registry = CollectorRegistry()
    policies = PolicyStore(config.policy, registry=registry)
    try:
        first, digest = _first_policy(policies)
    except PolicyError as exc:
        for issue in exc.issues:
            log.error("%s", issue)
        return 1
    health = Health(registry=registry)
    try:
        provider = tracing.configure(os.environ)  # OTEL_*: off when unset
        check_ready_file(config.ready_file)
        options_from_env({}, dict(os.environ))  # (MESHGATE_XDS_*: checked before anything starts)
        if config.redis_url:
            from .ratelimit.redis_store import check_redis_url

            check_redis_url(config.redis_url)
        servers, bound = listen(config)
        http_socket = bind_socket(config.listen[HTTP_ROLE])
        bound[HTTP_ROLE] = http_socket.getsockname()[1]
        metrics = metrics_server(config.metrics, registry)
    except (OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    wiring = build_services(
        config,
        ports=bound,
        first=first,
        policies=policies,
        health=health,
        registry=registry,
        tracer_provider=provider,
    )
    http = HttpCheckServer(
        wiring.extauthz.check_http, on_unavailable=wiring.extauthz.unavailable,
        max_body_bytes=lambda: policies.policy.gateway.ext_authz.max_request_bytes,
    )  # fmt: skip
    if not await _compile_first(wiring, policies, first, digest):
        http_socket.close()
        await asyncio.gather(*(server.stop(None) for server, _ in servers))
        await wiring.ratelimit.store.close()
        return 1
    await health.set("policy", policies.loaded)

    for service in wiring.every():
        await service.start()
    gate = CallGate()
    await _start(servers, wiring, config=config, ports=bound, policies=policies, health=health, gate=gate)
    await http.start(http_socket)
    log.info(
        "extauthz (HTTP) listening on %s:%d", split_address(config.listen[HTTP_ROLE])[0], bound[HTTP_ROLE]
    )
    ports = dict(bound)
    # everything built so far lives as long as the process: keep it out of the cyclic GC's scans
    # (measured: about half of the 5 µs per check the collector cost extauthz)
    gc.freeze()
    ports["metrics"] = metrics.server_port
    log.info("metrics listening on %s:%d", split_address(config.metrics)[0], ports["metrics"])
    await health.publish()

    reloader = Reloader(
        wiring.inputs,
        settle=config.reload_settle,
        watch=config.watch,
        freeze_gc=True,
        resync=DEFAULT_RESYNC if config.watch else 0.0,  # --no-watch: SIGHUP only
    )
    await reloader.run()
    stop = asyncio.Event()
    _install_signals(stop, reloader)
    if config.ready_file is not None:
        write_ready_file(config.ready_file, ports)
    log.info("meshgate serving policy generation %d", policies.generation)

    await stop.wait()
    await _stop(config, servers, wiring, reloader=reloader, health=health, gate=gate, http=http)
    metrics.shutdown()
    if provider is not None:
        await asyncio.to_thread(provider.shutdown)  # the last spans are exported
    log.info("stopped")
    return 0


async def _stop(
    config: ServeConfig,
    servers: Servers,
    wiring: Wiring,
    *,
    reloader: Reloader,
    health: Health,
    gate: CallGate,
    http: HttpCheckServer,
) -> None:
    """NOT_SERVING, the drain delay, then streams end and unary calls finish (at most the grace), then
    the servers stop: new calls are refused, calls still running get what is left of the grace."""
    log.info("stopping: NOT_SERVING, draining for %.1fs, then %.1fs grace", config.drain_delay, config.grace)
    await reloader.stop()
    await health.shutdown()
    await asyncio.sleep(config.drain_delay)
    left = await gate.close(config.grace, also=http)
    await http.stop()
    log.info("streams ended, %d call(s) in flight; stopping the servers", gate.in_flight)
    await asyncio.gather(*(server.stop(left) for server, _ in servers))
    for service in reversed(wiring.every()):
        await service.stop()


def _install_signals(stop: asyncio.Event, reloader: Reloader) -> None:
    loop = asyncio.get_running_loop()
    handlers: dict[signal.Signals, Callable[[], object]] = {
        signal.SIGTERM: stop.set,
        signal.SIGINT: stop.set,
        signal.SIGHUP: reloader.request,
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
