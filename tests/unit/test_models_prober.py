"""The prober with a fake probe function: hot swap, callbacks, metrics, the probe loop (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from meshgate.models import EndpointHealth, EndpointKey, Prober, ProbeTarget, check_once
from meshgate.models.probe import ProbeResult
from meshgate.policy.model import Policy
from meshgate.policy.store import PolicyStore

H, U, UNKNOWN = EndpointHealth.HEALTHY, EndpointHealth.UNHEALTHY, EndpointHealth.UNKNOWN


def policy(versions: dict[str, list[str]], **check: Any) -> Policy:
    return Policy.model_validate(
        {
            "models": [
                {
                    "name": "demo",
                    "health_check": {
                        "interval": "10ms",
                        "healthy_threshold": 2,
                        "unhealthy_threshold": 2,
                        **check,
                    },
                    "versions": [
                        {"name": name, "weight": 100 if i == 0 else 0, "endpoints": endpoints}
                        for i, (name, endpoints) in enumerate(versions.items())
                    ],
                }
            ]
        },
        strict=False,
    )


class FakeBackends:
    """Endpoint -> up? The probe function answers from it and reports every call on a queue."""

    def __init__(self, **up: bool) -> None:
        self.up = {k.replace("_", ":"): v for k, v in up.items()}
        self.calls: asyncio.Queue[EndpointKey] = asyncio.Queue()

    async def probe(self, target: ProbeTarget) -> ProbeResult:
        self.calls.put_nowait(target.key)
        if self.up.get(target.key.endpoint, False):
            return ProbeResult(True)
        return ProbeResult.failed("connect", "connection refused")


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def ready(registry: CollectorRegistry, endpoint: str, version: str = "v1") -> float | None:
    return metric(registry, "meshgate_model_endpoint_ready", model="demo", version=version, endpoint=endpoint)


def go(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def make(tmp_path: Path, backends: FakeBackends) -> tuple[PolicyStore, Prober, CollectorRegistry]:
    registry = CollectorRegistry()
    store = PolicyStore(tmp_path / "policy.yaml", registry=registry)
    return store, Prober(store, registry=registry, probe_fn=backends.probe), registry


def test_probe_round_sets_health_metrics_and_callbacks(tmp_path: Path) -> None:
    async def scenario() -> None:
        backends = FakeBackends(a_1=True, b_1=False)
        store, prober, registry = make(tmp_path, backends)
        changes: list[dict[EndpointKey, EndpointHealth]] = []
        prober.on_change(lambda c: changes.append(dict(c)))
        store.apply(policy({"v1": ["a:1", "b:1"]}))
        assert prober.health("demo", "v1", "a:1") is UNKNOWN
        assert ready(registry, "a:1") == 0

        await prober.probe_all()
        assert prober.health("demo", "v1", "a:1") is H
        assert prober.health("demo", "v1", "b:1") is U
        assert sorted(changes[0].items() | changes[1].items()) == [
            (EndpointKey("demo", "v1", "a:1"), H),
            (EndpointKey("demo", "v1", "b:1"), U),
        ]
        assert ready(registry, "a:1") == 1
        assert ready(registry, "b:1") == 0
        failures = {"model": "demo", "version": "v1", "endpoint": "b:1", "reason": "connect"}
        assert registry.get_sample_value("meshgate_model_probe_failures_total", failures) == 1
        assert (
            metric(registry, "meshgate_model_probe_duration_seconds_count", model="demo", version="v1") == 2
        )
        assert prober.snapshot()[EndpointKey("demo", "v1", "b:1")].detail == "connection refused"

        # thresholds: one failure keeps a healthy endpoint healthy, the second turns it unhealthy
        backends.up["a:1"] = False
        await prober.probe_all()
        assert prober.health("demo", "v1", "a:1") is H
        await prober.probe_all()
        assert prober.health("demo", "v1", "a:1") is U
        assert changes[-1] == {EndpointKey("demo", "v1", "a:1"): U}
        n = len(changes)
        await prober.probe_all()  # no transition, no callback
        assert len(changes) == n

    go(scenario)


def test_reconcile_keeps_unchanged_drops_removed_adds_new(tmp_path: Path) -> None:
    async def scenario() -> None:
        backends = FakeBackends(a_1=True, b_1=True, c_1=True)
        store, prober, registry = make(tmp_path, backends)
        store.apply(policy({"v1": ["a:1", "b:1"]}))
        await prober.probe_all()
        await prober.probe_all()
        kept_before = prober.snapshot()[EndpointKey("demo", "v1", "a:1")]
        assert kept_before.probes == 2

        store.apply(policy({"v1": ["a:1"], "v2": ["c:1"]}, unhealthy_threshold=5))
        snapshot = prober.snapshot()
        assert set(snapshot) == {EndpointKey("demo", "v1", "a:1"), EndpointKey("demo", "v2", "c:1")}
        assert snapshot[EndpointKey("demo", "v1", "a:1")] == kept_before
        assert snapshot[EndpointKey("demo", "v2", "c:1")].health is UNKNOWN
        assert prober.health("demo", "v1", "b:1") is UNKNOWN  # removed: no longer known
        assert ready(registry, "b:1") is None

        # the new thresholds apply to the kept endpoint: 4 failures are not enough any more
        backends.up["a:1"] = False
        for _ in range(4):
            await prober.probe_all()
        assert prober.health("demo", "v1", "a:1") is H
        await prober.probe_all()
        assert prober.health("demo", "v1", "a:1") is U

    go(scenario)


def test_disabled_probes_leave_endpoints_unknown(tmp_path: Path) -> None:
    async def scenario() -> None:
        backends = FakeBackends(a_1=True)
        store, prober, _ = make(tmp_path, backends)
        store.apply(policy({"v1": ["a:1"]}, enabled=False))
        assert await prober.probe_all() == {}
        assert prober.health("demo", "v1", "a:1") is UNKNOWN
        assert backends.calls.empty()

    go(scenario)


def test_background_loop_follows_the_backend_and_stops(tmp_path: Path) -> None:
    async def scenario() -> None:
        backends = FakeBackends(a_1=True)
        store, prober, _ = make(tmp_path, backends)
        store.apply(policy({"v1": ["a:1"]}))
        transitions: asyncio.Queue[EndpointHealth] = asyncio.Queue()
        unsubscribe = prober.on_change(lambda c: transitions.put_nowait(c[EndpointKey("demo", "v1", "a:1")]))
        await prober.start()
        assert await asyncio.wait_for(transitions.get(), 10) is H
        backends.up["a:1"] = False
        assert await asyncio.wait_for(transitions.get(), 10) is U
        backends.up["a:1"] = True
        assert await asyncio.wait_for(transitions.get(), 10) is H

        # a new endpoint added while running is probed by the loop
        store.apply(policy({"v1": ["a:1", "b:1"]}))
        while await asyncio.wait_for(backends.calls.get(), 10) != EndpointKey("demo", "v1", "b:1"):
            pass
        unsubscribe()
        await prober.stop()
        assert all(task.done() for task in asyncio.all_tasks() if task.get_name().startswith("probe "))

    go(scenario)


def test_a_raising_probe_or_callback_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    async def broken(target: ProbeTarget) -> ProbeResult:
        raise RuntimeError("bug")

    async def scenario() -> None:
        registry = CollectorRegistry()
        store = PolicyStore(tmp_path / "p.yaml", registry=registry)
        prober = Prober(store, registry=registry, probe_fn=broken)
        prober.on_change(lambda c: 1 / 0)
        store.apply(policy({"v1": ["a:1"]}))
        (result,) = (await prober.probe_all()).values()
        assert (result.ok, result.reason) == (False, "error")
        assert prober.health("demo", "v1", "a:1") is U

    go(scenario)


def test_check_once_probes_every_endpoint_concurrently_capped() -> None:
    running, peak = 0, 0

    async def slow(target: ProbeTarget) -> ProbeResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running -= 1
        return ProbeResult(target.key.endpoint != "e3:1")

    endpoints = [f"e{i}:1" for i in range(10)]
    results = asyncio.run(check_once(policy({"v1": endpoints}), probe_fn=slow, max_concurrency=3))
    assert sorted(k.endpoint for k, r in results.items() if not r.ok) == ["e3:1"]
    assert len(results) == 10
    assert 1 < peak <= 3


def test_a_probe_that_hangs_fails_after_the_timeout() -> None:
    async def hangs(target: ProbeTarget) -> ProbeResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    results = asyncio.run(check_once(policy({"v1": ["a:1"]}, timeout="10ms"), probe_fn=hangs))
    (result,) = results.values()
    assert (result.ok, result.reason, result.detail) == (False, "timeout", "no answer in 0.01s")
