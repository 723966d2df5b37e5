"""The readiness prober: probes every endpoint of the live policy on its interval, keeps its health.

Hot swap: it subscribes to the PolicyStore; a new policy reconciles the endpoint set (new endpoints
start UNKNOWN and are probed at once, removed ones are dropped with their metrics, unchanged ones keep
their state; changed probe settings apply from the next probe). One asyncio task per endpoint; at most
`max_concurrency` probes run at a time.

It is not a health component of meshgate: a model being down never makes meshgate NOT_SERVING (its
other models, and its other services, still work). Model health is seen in EDS, the admin API
(`meshgate models`) and the metrics below.

Metrics (on the registry given):
- `meshgate_model_endpoint_ready{model,version,endpoint}`: 1 HEALTHY, 0 UNHEALTHY or UNKNOWN.
- `meshgate_model_probe_duration_seconds{model,version}`: histogram of probe durations.
- `meshgate_model_probe_failures_total{model,version,endpoint,reason}`: failed probes by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from meshgate.policy.model import Policy
from meshgate.policy.store import Commit, PolicyStore

from ._types import EndpointHealth, EndpointKey, EndpointState, observe
from .probe import REASONS, ProbeResult, preload, probe
from .targets import ProbeTarget, probe_targets

__all__ = ["ProbeFn", "Prober", "check_once"]

log = logging.getLogger("meshgate.models")

ProbeFn = Callable[[ProbeTarget], Awaitable[ProbeResult]]
_Callback = Callable[[Mapping[EndpointKey, EndpointHealth]], None]


class Prober:
    """Service-like (start/stop, no gRPC service of its own): `meshgate serve` runs one."""

    grpc_names: tuple[str, ...] = ()

    def __init__(
        self,
        store: PolicyStore | None = None,
        *,
        registry: CollectorRegistry | None = None,
        probe_fn: ProbeFn = probe,
        max_concurrency: int = 32,
        quiet: bool = False,
    ) -> None:
        self._probe_fn = probe_fn
        self._log_level = logging.DEBUG if quiet else logging.INFO
        self._limit = asyncio.Semaphore(max_concurrency)
        self._targets: dict[EndpointKey, ProbeTarget] = {}
        self._states: dict[EndpointKey, EndpointState] = {}
        self._tasks: dict[EndpointKey, asyncio.Task[None]] = {}
        self._callbacks: list[_Callback] = []
        self._running = False
        self._ready = Gauge(
            "meshgate_model_endpoint_ready",
            "1 when the model endpoint is HEALTHY (readiness probes), else 0.",
            ["model", "version", "endpoint"],
            registry=registry,
        )
        self._duration = Histogram(
            "meshgate_model_probe_duration_seconds",
            "Duration of readiness probes.",
            ["model", "version"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self._failures = Counter(
            "meshgate_model_probe_failures",
            "Failed readiness probes by reason.",
            ["model", "version", "endpoint", "reason"],
            registry=registry,
        )
        if store is not None:
            store.subscribe("models", self.prepare)

    # --- the Readiness interface ---------------------------------------------------------------

    def health(self, model: str, version: str, endpoint: str) -> EndpointHealth:
        state = self._states.get(EndpointKey(model, version, endpoint))
        return state.health if state is not None else EndpointHealth.UNKNOWN

    def snapshot(self) -> dict[EndpointKey, EndpointState]:
        return dict(self._states)

    def on_change(self, callback: _Callback) -> Callable[[], None]:
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    # --- policy hot swap -----------------------------------------------------------------------

    def prepare(self, policy: Policy) -> Commit:
        targets = probe_targets(policy)
        return lambda: self.reconcile(targets)

    def reconcile(self, targets: Mapping[EndpointKey, ProbeTarget]) -> None:
        """Make `targets` the probed set: add new endpoints, drop removed ones, keep the rest's state."""
        removed = self._targets.keys() - targets.keys()
        added = targets.keys() - self._targets.keys()
        self._targets = dict(targets)
        for key in removed:
            self._states.pop(key, None)
            task = self._tasks.pop(key, None)
            if task is not None:
                task.cancel()
            self._forget_metrics(key)
        if added and self._running:
            self._preload()  # a protocol new to this process: import its client before the first probe
        for key in sorted(added):
            self._states[key] = EndpointState()
            self._ready.labels(key.model, key.version, key.endpoint).set(0)
            if self._running:
                self._spawn(key)
        if removed or added:
            log.log(
                self._log_level,
                "probing %d model endpoints (+%d, -%d)",
                len(targets),
                len(added),
                len(removed),
            )

    # --- lifecycle -----------------------------------------------------------------------------

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Nothing: the prober serves no gRPC; admin reads it."""

    async def start(self) -> None:
        self._preload()
        self._running = True
        for key in sorted(self._targets):
            if key not in self._tasks:
                self._spawn(key)

    async def stop(self) -> None:
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- probing -------------------------------------------------------------------------------

    async def probe_all(self) -> dict[EndpointKey, ProbeResult]:
        """One probe of every endpoint now (concurrent, capped), results recorded. For checks and tests."""
        self._preload()
        keys = sorted(self._targets)
        results = await asyncio.gather(*(self._probe_and_record(self._targets[key]) for key in keys))
        return dict(zip(keys, results, strict=True))

    def _preload(self) -> None:
        """Import the probe clients now, outside any probe's timeout (the first import can take 1s)."""
        if self._probe_fn is probe:
            preload({target.protocol for target in self._targets.values()})

    def _spawn(self, key: EndpointKey) -> None:
        self._tasks[key] = asyncio.get_running_loop().create_task(self._loop(key), name=f"probe {key}")

    async def _loop(self, key: EndpointKey) -> None:
        while True:
            target = self._targets.get(key)
            if target is None:
                return
            await self._probe_and_record(target)
            await asyncio.sleep(target.check.interval)

    async def _probe_and_record(self, target: ProbeTarget) -> ProbeResult:
        key = target.key
        async with self._limit:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(target.check.timeout):
                    result = await self._probe_fn(target)
            except TimeoutError:
                result = ProbeResult.failed("timeout", f"no answer in {target.check.timeout:g}s")
            except Exception as exc:  # a broken probe function must not stop the loop
                log.exception("probe of %s raised", key)
                result = ProbeResult.failed("error", f"{type(exc).__name__}: {exc}")
            elapsed = time.perf_counter() - started
        if key not in self._targets:
            return result  # removed while probing
        self._duration.labels(key.model, key.version).observe(elapsed)
        if not result.ok:
            self._failures.labels(key.model, key.version, key.endpoint, result.reason or "error").inc()
        self.record(key, result)
        return result

    def record(self, key: EndpointKey, result: ProbeResult) -> EndpointHealth | None:
        """Apply one probe result; returns the new health when it changed (and tells the callbacks)."""
        target = self._targets.get(key)
        if target is None:
            return None
        before = self._states.get(key, EndpointState())
        after = observe(before, result.ok, target.thresholds, result.detail)
        self._states[key] = after
        if after.health is before.health:
            return None
        self._ready.labels(key.model, key.version, key.endpoint).set(
            1 if after.health is EndpointHealth.HEALTHY else 0
        )
        level = logging.INFO if after.health is EndpointHealth.HEALTHY else logging.WARNING
        level = min(level, self._log_level) if self._log_level == logging.DEBUG else level
        log.log(level, "model endpoint %s is %s (%s)", key, after.health.name, result.detail)
        self._notify({key: after.health})
        return after.health

    def _notify(self, changes: Mapping[EndpointKey, EndpointHealth]) -> None:
        for callback in list(self._callbacks):
            try:
                callback(changes)
            except Exception:
                log.exception("model health callback %r failed", callback)

    def _forget_metrics(self, key: EndpointKey) -> None:
        with contextlib.suppress(KeyError):
            self._ready.remove(key.model, key.version, key.endpoint)
        for reason in REASONS:
            with contextlib.suppress(KeyError):
                self._failures.remove(key.model, key.version, key.endpoint, reason)


async def check_once(
    policy: Policy, *, probe_fn: ProbeFn = probe, max_concurrency: int = 32
) -> dict[EndpointKey, ProbeResult]:
    """Probe every endpoint of `policy` once (what `meshgate models check` runs)."""
    prober = Prober(probe_fn=probe_fn, max_concurrency=max_concurrency, quiet=True)
    prober.reconcile(probe_targets(policy))
    return await prober.probe_all()
