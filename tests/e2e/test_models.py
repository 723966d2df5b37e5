"""Readiness probes against real KServe model servers (REST and gRPC), through `meshgate serve`, its admin
API (`meshgate models --addr`) and `meshgate models check`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import yaml
from prometheus_client.parser import text_string_to_metric_families

from meshgate._proto import admin_pb2, admin_pb2_grpc
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import child_env, free_port, http_get, wait_until

HEALTHY, UNHEALTHY = admin_pb2.ENDPOINT_HEALTH_HEALTHY, admin_pb2.ENDPOINT_HEALTH_UNHEALTHY
FAST = {"interval": "100ms", "timeout": "5s", "healthy_threshold": 2, "unhealthy_threshold": 2}


def model(name: str, protocol: str, *endpoints: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": protocol,
        "health_check": FAST,
        "versions": [{"name": "v1", "weight": 100, "endpoints": list(endpoints)}],
        **extra,
    }


def status(mg: Meshgate) -> admin_pb2.Status:
    with grpc.insecure_channel(mg.address("xds"), options=[("grpc.enable_http_proxy", 0)]) as channel:
        return admin_pb2_grpc.AdminStub(channel).GetStatus(admin_pb2.GetStatusRequest(), timeout=5)


def endpoint(mg: Meshgate, model_name: str) -> admin_pb2.EndpointStatus:
    (found,) = [m for m in status(mg).models if m.name == model_name]
    (only,) = found.versions[0].endpoint_health
    return only


def wait_health(
    mg: Meshgate, model_name: str, health: int, *, timeout: float = 30
) -> admin_pb2.EndpointStatus:
    def reached() -> admin_pb2.EndpointStatus | None:
        current = endpoint(mg, model_name)
        return current if current.health == health else None

    name = admin_pb2.EndpointHealth.Name(health)
    return wait_until(reached, timeout, what=f"{model_name} endpoint {name}", proc=mg.proc)


def ready_gauge(mg: Meshgate) -> dict[tuple[str, str, str], float]:
    """meshgate_model_endpoint_ready from /metrics: {(model, version, endpoint): value}."""
    text = http_get(mg.metrics_url)[1].decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "meshgate_model_endpoint_ready"]
    return {(s.labels["model"], s.labels["version"], s.labels["endpoint"]): s.value for s in family.samples}


def meshgate_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshgate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )


def test_probes_follow_real_servers_rest_and_grpc(
    model_server_factory: Callable[..., ModelServer], meshgate_factory: Callable[..., Meshgate]
) -> None:
    rest = model_server_factory("rest-demo", "1", wait=False)
    grpc_server = model_server_factory("grpc-demo", "1", wait=False)
    rest.wait_ready()
    grpc_server.wait_ready()
    mg = meshgate_factory(
        {
            "models": [
                model("rest-demo", "v2-rest", f"{rest.host}:{rest.http_port}"),
                model("grpc-demo", "v2-grpc", grpc_server.grpc_address),
            ]
        }
    )
    wait_health(mg, "rest-demo", HEALTHY)
    wait_health(mg, "grpc-demo", HEALTHY)
    shown = meshgate_cli("models", "--addr", mg.address("extauthz"))
    assert shown.returncode == 0, shown.stderr
    assert f"{rest.host}:{rest.http_port}" in shown.stdout
    assert [line.split()[1] for line in shown.stdout.splitlines() if ":" in line.split()[0]] == [
        "HEALTHY",
        "HEALTHY",
    ]

    # the REST server stops: unhealthy after the threshold; meshgate keeps serving; the other model stays
    rest.stop()
    down = wait_health(mg, "rest-demo", UNHEALTHY)
    assert down.consecutive_failures >= FAST["unhealthy_threshold"]
    assert status(mg).serving
    assert endpoint(mg, "grpc-demo").health == HEALTHY
    shown = meshgate_cli("models", "--addr", mg.address("xds"))
    assert shown.returncode == 1
    assert "rest-demo/v1: no ready endpoint" in shown.stderr
    assert "UNHEALTHY" in shown.stdout

    assert ready_gauge(mg) == {
        ("rest-demo", "v1", f"{rest.host}:{rest.http_port}"): 0,
        ("grpc-demo", "v1", grpc_server.grpc_address): 1,
    }

    # it comes back on the same port: healthy again
    rest.start()
    wait_health(mg, "rest-demo", HEALTHY)

    # the same for gRPC
    grpc_server.stop()
    wait_health(mg, "grpc-demo", UNHEALTHY)
    grpc_server.start()
    back = wait_health(mg, "grpc-demo", HEALTHY)
    assert back.consecutive_successes >= FAST["healthy_threshold"]

    # hot swap: the gRPC model leaves the policy; the REST endpoint keeps its state, the other is dropped
    kept = endpoint(mg, "rest-demo")
    mg.policy_path.write_text(
        yaml.safe_dump({"models": [model("rest-demo", "v2-rest", f"{rest.host}:{rest.http_port}")]})
    )
    mg.reload()
    wait_until(lambda: len(status(mg).models) == 1, 30, what="policy without grpc-demo", proc=mg.proc)
    assert endpoint(mg, "rest-demo").health == HEALTHY
    assert endpoint(mg, "rest-demo").consecutive_successes >= kept.consecutive_successes
    assert ready_gauge(mg) == {("rest-demo", "v1", f"{rest.host}:{rest.http_port}"): 1}


def test_models_check_exit_codes(model_server: ModelServer, tmp_path: Path) -> None:
    def check(policy: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "policy.yaml"
        path.write_text(yaml.safe_dump(policy))
        return meshgate_cli("models", "check", "--policy", str(path))

    rest = f"{model_server.host}:{model_server.http_port}"
    ok = check({"models": [model("demo", "v2-rest", rest)]})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[1].split() == ["v1", "1/1", "ready"]

    grpc_ok = check({"models": [model("demo", "v2-grpc", model_server.grpc_address)]})
    assert grpc_ok.returncode == 0, grpc_ok.stdout + grpc_ok.stderr

    dead = f"127.0.0.1:{free_port()}"
    two = model("demo", "v2-rest", rest)
    two["versions"] = [
        {"name": "v1", "weight": 50, "endpoints": [rest, dead]},
        {"name": "v2", "weight": 50, "endpoints": [dead]},
    ]
    partly = check({"models": [two]})
    assert partly.returncode == 1
    assert partly.stderr.strip().splitlines() == ["demo/v2: no ready endpoint"]
    assert "v1           1/2 ready" in partly.stdout

    # a model the server does not have; a versioned readiness URL, which KServe answers with 501
    missing = check({"models": [model("other", "v2-grpc", model_server.grpc_address)]})
    assert missing.returncode == 1
    assert "model other not ready" in missing.stdout
    versioned = model("demo", "v2-rest", rest)
    versioned["versions"][0]["backend_version"] = "1"
    assert check({"models": [versioned]}).returncode == 1

    invalid = check({"models": [{"name": "demo", "versions": []}]})
    assert invalid.returncode == 2
    assert "versions" in invalid.stderr
