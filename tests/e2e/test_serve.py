"""`meshgate serve` as a real process: ports, health as the AND of components, /metrics, reload, SIGTERM."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.meshgate import Meshgate
from tests.harness.procs import http_get, wait_until

ROOT = Path(__file__).parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(reply.status)


def _metric(mg: Meshgate, line_prefix: str) -> float | None:
    status, body = http_get(mg.metrics_url)
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.split()[-1])
    return None


def _policy_copy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    shutil.copy(ROOT / "examples" / "policy.yaml", path)
    return path


@pytest.mark.parametrize(("event_loop", "runs_on"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_serve_reports_ports_health_and_metrics(
    meshgate_factory: Callable[..., Meshgate], tmp_path: Path, event_loop: str, runs_on: str
) -> None:
    mg = meshgate_factory(_policy_copy(tmp_path), extra_args=["--event-loop", event_loop])
    assert f"event loop: {runs_on}" in mg.proc.tail(50)
    assert len({mg.ports[s] for s in ("extauthz", "ratelimit", "xds", "metrics")}) == 4
    for role in ("extauthz", "ratelimit", "xds"):
        assert _health(mg.address(role)) == SERVING
    assert _metric(mg, "meshgate_policy_generation") == 1
    assert _metric(mg, 'meshgate_health_component_up{component="policy"}') == 1


def test_reload_keeps_last_good_and_applies_valid_changes(
    meshgate_factory: Callable[..., Meshgate], tmp_path: Path
) -> None:
    path = _policy_copy(tmp_path)
    good = path.read_text()
    mg = meshgate_factory(path)

    path.write_text(good.replace("window: second", "window: fortnight"))
    mg.reload()  # SIGHUP; the watcher may see it too: either way it must be rejected
    wait_until(
        lambda: (_metric(mg, 'meshgate_policy_reloads_total{result="invalid"}') or 0) >= 1,
        15,
        what="invalid policy counted",
        proc=mg.proc,
    )
    assert _metric(mg, "meshgate_policy_generation") == 1
    assert _health(mg.address("extauthz")) == SERVING
    assert "quotas[0].window: 'fortnight' is not one of" in mg.proc.tail(200)

    path.write_text(good.replace("multiplier: 10", "multiplier: 20"))
    wait_until(
        lambda: _metric(mg, "meshgate_policy_generation") == 2,
        15,
        what="valid change picked up by the file watch",
        proc=mg.proc,
    )


@pytest.mark.parametrize("event_loop", ["auto", "asyncio"])
def test_sigterm_goes_not_serving_before_it_stops(
    meshgate_factory: Callable[..., Meshgate], tmp_path: Path, event_loop: str
) -> None:
    mg = meshgate_factory(_policy_copy(tmp_path), drain_delay=3.0, extra_args=["--event-loop", event_loop])
    address = mg.address("ratelimit")
    assert _health(address) == SERVING
    mg.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: _health(address) == NOT_SERVING, 3, what="NOT_SERVING during the drain", proc=mg.proc)
    assert mg.proc.wait_exit(20) == 0
    assert "stopped" in mg.proc.tail(5)


def test_serve_refuses_an_invalid_policy_at_start(tmp_path: Path) -> None:
    bad = ROOT / "tests" / "fixtures" / "policies" / "bad" / "weights_not_100.yaml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshgate",
            "serve",
            "--policy",
            str(bad),
            "--extauthz",
            "127.0.0.1:0",
            "--ratelimit",
            "127.0.0.1:0",
            "--xds",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "models[0].versions: version weights must add up to 100, got 110" in done.stderr


def test_status_cli_reads_the_admin_service(
    meshgate_factory: Callable[..., Meshgate], tmp_path: Path
) -> None:
    mg = meshgate_factory(_policy_copy(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "meshgate", "status", "--addr", mg.address("xds")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith(": SERVING, policy generation 1")
    assert "policy=up" in lines[2] and "sigterm=up" in lines[2]
    assert "model resnet (v2-rest, public, shadow v3 5%)" in lines
    assert "  v1           weight  90  127.0.0.1:9101" in lines
