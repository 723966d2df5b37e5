"""The endpoint health state machine and the policy -> probe targets mapping (pure)."""

from __future__ import annotations

from functools import reduce

import pytest
from pydantic import ValidationError

from meshgate.models import EndpointHealth, EndpointKey, EndpointState, Thresholds, probe_targets
from meshgate.models._types import observe
from meshgate.policy.model import HealthCheck, Policy

H, U, UNKNOWN = EndpointHealth.HEALTHY, EndpointHealth.UNHEALTHY, EndpointHealth.UNKNOWN


DEFAULT = Thresholds(healthy=2, unhealthy=3)


def run(results: str, thresholds: Thresholds = DEFAULT) -> list[EndpointHealth]:
    """Health after each result of a string like "++-+" (+ success, - failure)."""
    out, state = [], EndpointState()
    for char in results:
        state = observe(state, char == "+", thresholds)
        out.append(state.health)
    return out


def test_starts_unknown_and_the_first_result_decides() -> None:
    assert EndpointState().health is UNKNOWN
    assert run("+") == [H]
    assert run("-") == [U]


def test_unhealthy_after_threshold_consecutive_failures() -> None:
    assert run("+---") == [H, H, H, U]
    assert run("+--", Thresholds(healthy=1, unhealthy=1))[-1] is U
    assert run("+-", Thresholds(healthy=1, unhealthy=1)) == [H, U]


def test_healthy_after_threshold_consecutive_successes() -> None:
    assert run("-++") == [U, U, H]
    assert run("-+++", Thresholds(healthy=3, unhealthy=1)) == [U, U, U, H]


def test_flapping_keeps_the_current_health() -> None:
    assert run("+-+-+--+-") == [H] * 9
    assert run("-+-+-+") == [U] * 6
    # a success in between resets the failure count
    assert run("+--+--") == [H] * 6


def test_counters_and_detail() -> None:
    state = reduce(lambda s, ok: observe(s, ok, Thresholds(), "x"), [True, False, False], EndpointState())
    assert (state.successes, state.failures, state.probes, state.detail) == (0, 2, 3, "x")
    state = observe(state, True, Thresholds(), "ready")
    assert (state.successes, state.failures, state.detail) == (1, 0, "ready")


def _policy(**model: object) -> Policy:
    return Policy.model_validate(
        {
            "models": [
                {
                    "name": "resnet",
                    "protocol": "v2-grpc",
                    "versions": [
                        {"name": "v1", "weight": 90, "endpoints": ["10.0.0.1:8001", "10.0.0.2:8001"]},
                        {
                            "name": "v2",
                            "weight": 10,
                            "kserve": {"service": "resnet-v2", "port": 8080},
                            "backend_version": "2",
                        },
                    ],
                    **model,
                },
                {
                    "name": "off",
                    "health_check": {"enabled": False},
                    "versions": [{"name": "v1", "endpoints": ["10.0.0.3:80"]}],
                },
            ]
        },
        strict=False,
    )


def test_probe_targets_from_policy() -> None:
    targets = probe_targets(_policy(health_check={"healthy_threshold": 4, "unhealthy_threshold": 1}))
    assert sorted(targets) == [
        EndpointKey("resnet", "v1", "10.0.0.1:8001"),
        EndpointKey("resnet", "v1", "10.0.0.2:8001"),
        EndpointKey("resnet", "v2", "resnet-v2-predictor.default.svc.cluster.local:8080"),
    ]  # the model with probes disabled is absent
    kserve = targets[EndpointKey("resnet", "v2", "resnet-v2-predictor.default.svc.cluster.local:8080")]
    assert (kserve.host, kserve.port, kserve.protocol, kserve.backend_version) == (
        "resnet-v2-predictor.default.svc.cluster.local",
        8080,
        "v2-grpc",
        "2",
    )
    v1 = targets[EndpointKey("resnet", "v1", "10.0.0.1:8001")]
    assert (v1.backend_version, v1.model_name) == ("", "resnet")
    assert v1.thresholds == Thresholds(healthy=4, unhealthy=1)


def test_health_check_defaults_and_bounds() -> None:
    check = HealthCheck()
    assert (check.enabled, check.interval, check.timeout) == (True, 5.0, 1.0)
    assert (check.healthy_threshold, check.unhealthy_threshold, check.path) == (2, 3, "/v1/models")
    assert HealthCheck.model_validate({"interval": "250ms", "path": "/health"}).interval == 0.25
    for bad in ({"interval": 5}, {"healthy_threshold": 0}, {"path": "health"}, {"intervall": "1s"}):
        with pytest.raises(ValidationError):
            HealthCheck.model_validate(bad)
