"""The meshgate helper against the real `python -m meshgate serve`: ports from the ready file, health,
/metrics, a clean SIGTERM, and a failed start that surfaces the process's own error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.meshgate import SERVICES, Meshgate
from tests.harness.procs import StartupError, http_get, tcp_open

EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"


def test_serve_reports_its_ports_and_stops_cleanly(meshgate_factory: Callable[..., Meshgate]) -> None:
    mesh = meshgate_factory(EXAMPLE_POLICY)

    assert set(mesh.ports) == set(SERVICES)
    assert len(set(mesh.ports.values())) == len(SERVICES)  # port 0 each: four distinct ports
    for service in ("extauthz", "ratelimit", "xds"):
        with grpc.insecure_channel(mesh.address(service)) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    status, _ = http_get(mesh.metrics_url)
    assert status == 200

    assert mesh.stop() == 0
    for port in mesh.ports.values():
        with pytest.raises(ConnectionRefusedError):
            tcp_open(mesh.host, port)


def test_a_bad_policy_fails_the_start_with_the_log_tail(
    meshgate_factory: Callable[..., Meshgate], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nno_such_section: true\n")

    with pytest.raises(StartupError) as caught:
        meshgate_factory(bad)

    message = str(caught.value)
    assert "exited while waiting for" in message
    assert "no_such_section" in message  # meshgate's own error, from its log
