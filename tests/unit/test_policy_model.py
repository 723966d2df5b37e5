"""The policy model: defaults, normalisation, immutability, and the example document."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from meshgate.policy import PolicyError, load_policy, parse_policy
from meshgate.policy.model import parse_duration

ROOT = Path(__file__).parents[2]


def test_example_policy_parses_with_its_values() -> None:
    policy = load_policy(ROOT / "examples" / "policy.yaml")
    resnet = policy.model("resnet")
    assert resnet is not None
    assert [(v.name, v.weight) for v in resnet.versions] == [("v1", 90), ("v2", 10), ("v3", 0)]
    assert resnet.shadow is not None and (resnet.shadow.version, resnet.shadow.percent) == ("v3", 5)
    assert resnet.timeout == 30.0
    assert resnet.retries.per_try_timeout == 10.0
    llama = policy.model("llama-chat")
    assert llama is not None and llama.owner == "acme" and llama.context_limit_tokens == 4096
    assert policy.gateway.ext_authz.timeout == 0.25
    assert policy.issuers[0].leeway == 30.0
    assert policy.quotas[1].per == ("tenant",)
    tier = policy.tier("gold")
    assert tier is not None and tier.multiplier == 10


def test_single_version_without_weight_takes_all_traffic() -> None:
    policy = load_policy(ROOT / "tests" / "fixtures" / "policies" / "minimal.yaml")
    assert policy.models[0].versions[0].weight == 100


def test_defaults_are_safe() -> None:
    policy = parse_policy("{}")
    assert policy.gateway.ext_authz.failure_mode_allow is False
    assert policy.gateway.ratelimit.failure_mode_deny is True
    assert policy.auth.forward_authorization is False
    assert policy.auth.api_key_header == "x-api-key"


def test_policy_is_frozen() -> None:
    policy = load_policy(ROOT / "tests" / "fixtures" / "policies" / "minimal.yaml")
    with pytest.raises(ValidationError):
        policy.models[0].name = "other"  # type: ignore[misc]
    assert isinstance(policy.models, tuple)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30.0), ("1.5s", 1.5), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "5 minutes", "-1s", "1w", "", "ms"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_all_errors_reported_at_once() -> None:
    text = "tenants:\n  - name: a\n    teir: x\n  - name: B\nquotas: 3\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    assert [str(i) for i in caught.value.issues] == [
        "p.yaml:3: tenants[0].teir: unknown key 'teir' (did you mean 'tier'?)",
        "p.yaml:4: tenants[1].name: invalid value 'B': expected lowercase letters, digits, '-', '_' or '.', "
        "starting and ending with a letter or digit, at most 63",
        "p.yaml:5: quotas: expected a list, got int 3",
    ]


@pytest.mark.parametrize("window", ["20ms", "0.5s", "250ms", "1.5ms"])
def test_redis_pipeline_window_is_0_or_whole_milliseconds_up_to_10(window: str) -> None:
    text = f"gateway:\n  ratelimit:\n    store_pipeline_window: {window}\n    store_pipeline_limit: -1\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    ms = f"{parse_duration(window) * 1000:g}ms"
    assert [str(i) for i in caught.value.issues] == [
        f"p.yaml:3: gateway.ratelimit.store_pipeline_window: invalid pipeline window {ms}: 0, or whole "
        "milliseconds from 1ms to 10ms (the event loop's timers count milliseconds)",
        "p.yaml:4: gateway.ratelimit.store_pipeline_limit: must be >= 0, got -1",
    ]


def test_redis_pipeline_window_must_be_shorter_than_the_store_timeout() -> None:
    text = "gateway:\n  ratelimit:\n    store_timeout: 5ms\n    store_pipeline_window: 5ms\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    assert [str(i) for i in caught.value.issues] == [
        "p.yaml:2: gateway.ratelimit: store_pipeline_window (5ms) must be shorter than store_timeout (5ms): "
        "a held call would time out",
    ]


def test_redis_pipeline_window_defaults_off() -> None:
    assert parse_policy("{}").gateway.ratelimit.store_pipeline_window == 0
    settings = parse_policy("gateway: {ratelimit: {store_pipeline_window: 1ms}}").gateway.ratelimit
    assert (settings.store_pipeline_window, settings.store_pipeline_limit) == (0.001, 0)


def test_secrets_are_references_never_inline() -> None:
    text = """
issuers:
  - name: internal
    issuer: https://internal.example
    audiences: [meshgate]
    algorithms: [HS256]
    shared_secret: {value: hunter2}
"""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    assert "unknown key 'value'" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    ok = parse_policy(text.replace("{value: hunter2}", "{env: JWT_SECRET}"))
    assert ok.issuers[0].shared_secret is not None and ok.issuers[0].shared_secret.env == "JWT_SECRET"


def test_role_version_glob_must_match_a_version() -> None:
    text = """
roles: [{name: r, models: [m], versions: [v9]}]
models: [{name: m, versions: [{name: v1, endpoints: ["h:1"]}]}]
"""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    assert [str(i) for i in caught.value.issues] == [
        "p.yaml:2: roles[0].versions[0]: 'v9' matches no version of the role's models"
    ]


def test_shadow_version_must_not_take_weight() -> None:
    text = """
models:
  - name: m
    versions:
      - {name: v1, weight: 50, endpoints: ["h:1"]}
      - {name: v2, weight: 50, endpoints: ["h:2"]}
    shadow: {version: v2, percent: 10}
"""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    assert [str(i) for i in caught.value.issues] == [
        "p.yaml:7: models[0].shadow.version: shadow version 'v2' also has weight 50: give it weight 0"
    ]
