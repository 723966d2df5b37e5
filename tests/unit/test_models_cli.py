"""What `meshgate models` and `meshgate models check` print, and the admin Status with endpoint health."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from meshgate._proto import admin_pb2
from meshgate.admin import status_message
from meshgate.health import Health
from meshgate.models import EndpointKey, Prober, ProbeTarget
from meshgate.models.cli import format_check, format_status
from meshgate.models.probe import ProbeResult
from meshgate.policy.model import Policy
from meshgate.policy.store import PolicyStore

POLICY = {
    "models": [
        {
            "name": "resnet",
            "versions": [
                {"name": "v1", "weight": 90, "endpoints": ["10.0.0.1:80", "10.0.0.2:80"]},
                {"name": "v2", "weight": 10, "endpoints": ["10.0.0.3:80"]},
                {"name": "v3", "weight": 0, "endpoints": ["10.0.0.4:80"]},
            ],
            "shadow": {"version": "v3", "percent": 5},
        },
        {
            "name": "llm",
            "protocol": "openai",
            "health_check": {"enabled": False},
            "versions": [{"name": "v1", "weight": 100, "endpoints": ["10.0.0.9:80"]}],
        },
    ]
}
UP = {"10.0.0.1:80", "10.0.0.4:80"}


async def fake_probe(target: ProbeTarget) -> ProbeResult:
    if target.key.endpoint in UP:
        return ProbeResult(True)
    return ProbeResult.failed("connect", "connection refused")


def test_admin_status_and_models_output(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = PolicyStore(tmp_path / "policy.yaml", registry=registry)
    prober = Prober(store, registry=registry, probe_fn=fake_probe)
    store.apply(Policy.model_validate(POLICY, strict=False))
    asyncio.run(prober.probe_all())

    status = status_message(store, Health(registry=registry), prober)
    resnet = status.models[0]
    v1 = resnet.versions[0]
    assert [(e.endpoint, e.health, e.detail) for e in v1.endpoint_health] == [
        ("10.0.0.1:80", admin_pb2.ENDPOINT_HEALTH_HEALTHY, "ready"),
        ("10.0.0.2:80", admin_pb2.ENDPOINT_HEALTH_UNHEALTHY, "connection refused"),
    ]
    assert v1.endpoint_health[1].consecutive_failures == 1
    assert list(status.models[1].versions[0].endpoint_health) == []  # probes disabled

    lines, down = format_status(status)
    assert down == ["resnet/v2"]
    assert lines[0] == "model resnet (v2-rest, public, shadow v3 5%)"
    assert lines[1].split() == ["v1", "weight", "90", "1/2", "ready"]
    assert lines[2].split() == ["10.0.0.1:80", "HEALTHY", "ready"]
    assert lines[3].split() == ["10.0.0.2:80", "UNHEALTHY", "connection", "refused"]
    assert lines[4].split() == ["v2", "weight", "10", "0/1", "ready"]
    assert lines[-2] == "model llm (openai, public)"
    assert lines[-1].split() == ["v1", "weight", "100", "not", "probed"]


def test_admin_status_without_a_prober_has_no_endpoint_health(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "policy.yaml", registry=CollectorRegistry())
    store.apply(Policy.model_validate(POLICY, strict=False))
    status = status_message(store, Health(registry=CollectorRegistry()))
    assert all(not v.endpoint_health for m in status.models for v in m.versions)
    assert format_status(status)[1] == []


def test_unknown_endpoints_are_not_down() -> None:
    status = admin_pb2.Status(
        models=[
            admin_pb2.ModelStatus(
                name="m",
                versions=[
                    admin_pb2.ModelVersionStatus(
                        name="v1", endpoint_health=[admin_pb2.EndpointStatus(endpoint="a:1")]
                    )
                ],
            )
        ]
    )
    lines, down = format_status(status)
    assert down == []
    assert lines[2].split() == ["a:1", "UNKNOWN"]


def test_check_output_names_versions_without_a_ready_endpoint() -> None:
    policy = Policy.model_validate(POLICY, strict=False)
    results = {
        EndpointKey("resnet", "v1", "10.0.0.1:80"): ProbeResult(True),
        EndpointKey("resnet", "v1", "10.0.0.2:80"): ProbeResult.failed("connect", "refused"),
        EndpointKey("resnet", "v2", "10.0.0.3:80"): ProbeResult.failed("timeout", "no answer in 1s"),
        EndpointKey("resnet", "v3", "10.0.0.4:80"): ProbeResult(True),
    }
    lines, down = format_check(policy, results)
    assert down == ["resnet/v2"]
    assert "model llm: probes disabled" in lines
    assert lines[1].split() == ["v1", "1/2", "ready"]
    assert lines[3].split() == ["10.0.0.2:80", "NOT", "READY", "refused"]


def test_importing_meshgate_models_never_loads_tritonclient_grpc() -> None:
    """The demo KServe server imports meshgate.models: tritonclient.grpc there would clash with kserve."""
    code = (
        "import sys, meshgate.models, meshgate.models.cli, meshgate.models.probe, meshgate.admin;"
        "assert not [m for m in sys.modules if m.startswith('tritonclient')], 'tritonclient imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_command_line_parsing_and_early_exits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from meshgate import cli

    parser = cli._parser()
    assert parser.parse_args(["models", "--addr", "h:1"]).func is cli._cmd_models
    args = parser.parse_args(["models", "check", "--policy", "p.yaml", "--model", "a", "--model", "b"])
    assert (args.func, args.policy, args.model) == (cli._cmd_models_check, "p.yaml", ["a", "b"])

    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: demo\n    versions: []\n")
    assert cli.main(["models", "check", "--policy", str(bad)]) == 2
    assert "versions" in capsys.readouterr().err

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(POLICY))
    assert cli.main(["models", "check", "--policy", str(good), "--model", "nope"]) == 2
    assert "no model named nope" in capsys.readouterr().err
    assert cli.main(["models", "check", "--policy", str(good), "--model", "llm"]) == 0  # probes disabled
    assert "model llm: probes disabled" in capsys.readouterr().out
