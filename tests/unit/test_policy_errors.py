"""One bad-policy fixture per error kind, each with its exact message: file:line: field path: message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshgate.policy import PolicyError, load_policy, parse_policy, policy_warnings
from meshgate.policy.load import MAX_ISSUES

BAD = Path(__file__).parent.parent / "fixtures" / "policies" / "bad"
WARN = Path(__file__).parent.parent / "fixtures" / "policies" / "warn"

EXPECTED = {
    "misspelled_key": ["3: tenants[0].teir: unknown key 'teir' (did you mean 'tier'?)"],
    "wrong_type": ["4: quotas[0].limit: expected an integer, got str '60'"],
    "bad_duration": [
        "3: models[0].timeout: invalid duration 30: use a number and a unit (ms, s, m, h, d), e.g. 250ms or 30s"
    ],
    "weights_not_100": ["3: models[0].versions: version weights must add up to 100, got 110 (v1=90 + v2=20)"],
    "weight_missing": [
        "5: models[0].versions[1].weight: weight is required when a model has several versions"
    ],
    "unknown_model_in_role": ["3: roles[0].models[1]: 'llama-*' matches no model"],
    "shadow_unknown_version": ["5: models[0].shadow.version: unknown version 'v3'"],
    "duplicate_name": ["4: tenants[2].name: duplicate tenant name 'acme' (first at tenants[0])"],
    "private_without_owner": ["2: models[0]: a private model needs an owner tenant"],
    "unknown_references": [
        "5: tenants[0].tier: unknown tier 'gold'",
        "6: tenants[0].quotas[0]: unknown quota 'rps'",
        "9: api_keys[0].tenant: unknown tenant 'globex'",
        "10: api_keys[0].roles[0]: unknown role 'admin'",
    ],
    "bad_enum": ["5: quotas[0].window: 'sec' is not one of 'second', 'minute', 'hour' or 'day'"],
    "alg_none": [
        "6: issuers[0].algorithms[1]: 'none' is not one of 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', "
        "'PS512', 'ES256', 'ES384', 'EdDSA', 'HS256', 'HS384' or 'HS512'"
    ],
    "hmac_without_secret": [
        "2: issuers[0]: algorithms ['HS256'] need shared_secret (HMAC is refused for public keys)"
    ],
    "duplicate_yaml_key": ["4: tenants[0].tier: duplicate key 'tier'"],
    "invalid_yaml": ["3: <document>: invalid YAML: did not find expected ',' or ']'"],
    "bad_endpoint": [
        "4: models[0].versions[0].endpoints[0]: invalid endpoint '127.0.0.1': expected host:port (a DNS "
        "name, an IPv4 address or [an IPv6 address], no scheme or path) with a port from 1 to 65535"
    ],
    "hostile_values": [
        "2: tiers[0].multiplier: input should be a finite number, got float inf",
        "7: models[0].timeout: duration '99999999999999999999d' is longer than 365d",
        "8: models[0].circuit_breaker.max_requests: must be <= 4294967295, got 100000000000",
        *(
            f"10: models[0].versions[0].endpoints[{i}]: invalid endpoint {e!r}: expected host:port (a DNS "
            "name, an IPv4 address or [an IPv6 address], no scheme or path) with a port from 1 to 65535"
            for i, e in enumerate(["http://127.0.0.1:9101", "my host:9101", "host:\u0669\u0661"])
        ),
        "12: quotas[0].limit: must be <= 4294967295, got 100000000000",
        "14: issuers[0].jwks_uri: invalid URL 'http://': expected http:// or https://, a host, and no white space",
        "16: gateway.ext_authz.timeout: invalid duration '\u0663\u0660s': use a number and a unit (ms, s, m, h, "
        "d), e.g. 250ms or 30s",
    ],
    "limit_times_tier": [
        "6: quotas[0].limit: 10000000 times the multiplier of tier 'gold' (tenant 'acme') is 10000000000, more "
        "than 4294967295 (what a rate limit holds)"
    ],
    "unusable_settings": [
        "1: auth.api_key_header: api_key_header 'x-meshgate-key' cannot carry an API key: `authorization` holds "
        "bearer tokens, `host` the authority, and every `x-meshgate-*` header a client sends is removed",
        "3: issuers[0].jwks_cache: min_ttl (86400s) is longer than max_ttl (300s)",
        "5: quotas[0].models: needs at least 1 item(s)",
    ],
    "listed_twice": [  # (a quota counted twice a request, an endpoint given twice the traffic)
        "5: tenants[0].quotas[1]: 'q' is listed twice (first at tenants[0].quotas[0])",
        "9: models[0].versions[0].endpoints[1]: '127.0.0.1:9101' is listed twice (first at "
        "models[0].versions[0].endpoints[0])",
    ],
    "zero_timeouts": [  # (0 is no timeout to Envoy, and a refetch per request of an unknown kid)
        "2: gateway.ext_authz.timeout: must be > 0, got '0ms'",
        "4: issuers[0].jwks_cache.unknown_kid_refetch: must be > 0, got '0s'",
        "7: models[0].timeout: must be > 0, got '0s'",
    ],
    "unusable_jwks": ["5: issuers[0].jwks: issuer idp jwks: no usable signing key (RSA, EC P-256/P-384 or Ed25519)"],
    "bad_sha256": [
        "6: api_keys[0].sha256: invalid value 'not-a-hash': expected 64 lowercase hex digits (the SHA-256 of the key)"
    ],
    "mtls_missing_files": ["3: models[0].upstream_tls: mode mtls needs key_file, ca_file"],
    "not_a_mapping": ["1: <document>: a policy must be a mapping at the top level"],
    "token_quota_on_kserve_model": [
        "13: quotas[0].models[1]: a tokens quota counts LLM tokens; model 'iris' is protocol v2-rest, "
        "which reports none (only protocol openai models do)"
    ],
    "llm_fields_on_kserve_model": [
        "4: models[0].context_limit_tokens: context_limit_tokens is for LLMs (protocol openai); "
        "model 'iris' is protocol v2-grpc",
        "5: models[0].tokenizer: tokenizer is for LLMs (protocol openai); model 'iris' is protocol v2-grpc",
        "6: models[0].max_json_answer_bytes: max_json_answer_bytes is for LLMs (protocol openai); "
        "model 'iris' is protocol v2-grpc",
        "10: models[0].versions[0].served_name: served_name is for LLMs (protocol openai); "
        "model 'iris' is protocol v2-grpc",
    ],
}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(p.stem for p in BAD.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_policy_exact_messages(name: str) -> None:
    path = BAD / f"{name}.yaml"
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert [str(issue) for issue in caught.value.issues] == [f"{path}:{line}" for line in EXPECTED[name]]


def test_validate_cli_prints_every_error_and_exits_nonzero() -> None:
    path = BAD / "unknown_references.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "meshgate", "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"{path}:{line}" for line in EXPECTED["unknown_references"]] + [
        f"{path}: 4 error(s)"
    ]


def test_validate_cli_accepts_the_example() -> None:
    example = Path(__file__).parents[2] / "examples" / "policy.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "meshgate", "validate", str(example)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ok (2 tenants, 2 models, 2 roles, 2 quotas)" in done.stdout


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "missing.yaml")
    assert (
        str(caught.value) == f"{tmp_path / 'missing.yaml'}:0: <file>: cannot read: No such file or directory"
    )


def test_render_refuses_an_invalid_policy_with_its_errors() -> None:
    path = BAD / "weights_not_100.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "meshgate", "render", "--policy", str(path), "--target", "istio"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"{path}:{EXPECTED['weights_not_100'][0]}"]


# valid policies that are probably not meant: `meshgate validate` prints them as warnings, exit 0
WARNED = {
    "timeouts_never_reached": [
        "4: models[0].retries.per_try_timeout: a try's timeout (600s) is longer than the route's (30s), which "
        "ends the request first",
        "5: models[0].health_check.timeout: a probe's timeout (5s) is longer than the time between probes (2s)",
    ],
    "token_quota_below_one_request": [
        "15: quotas[0].limit: limit 1000 for tenant globex is below the context limit 4096 of model 'chat': "
        "a request without max_tokens asks for up to 4096 tokens and would always be refused; raise the "
        "limit or lower context_limit_tokens"
    ],
}


def test_every_warning_fixture_has_an_expectation() -> None:
    assert sorted(p.stem for p in WARN.glob("*.yaml")) == sorted(WARNED)


@pytest.mark.parametrize("name", sorted(WARNED))
def test_policy_warnings_exact_messages(name: str) -> None:
    path = WARN / f"{name}.yaml"
    load_policy(path)  # valid
    assert [str(w) for w in policy_warnings(path)] == [f"{path}:{line}" for line in WARNED[name]]
    done = subprocess.run([sys.executable, "-m", "meshgate", "validate", str(path)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0
    lines = [line.split(": ", 2) for line in WARNED[name]]  # number, field, message
    assert done.stderr.splitlines() == [f"{path}:{n}: {field}: warning: {message}" for n, field, message in lines]


def _issues_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    return [str(issue) for issue in caught.value.issues]


def test_a_hint_names_a_field_of_the_mapping_the_unknown_key_is_in() -> None:
    """"did you mean" picks among the fields where the key is: `tenant` at the top is `tenants` (a
    field `tenant` exists, of an API key), `weight` in a shadow has no close field there."""
    assert _issues_of("tenant: []\n") == ["p.yaml:1: tenant: unknown key 'tenant' (did you mean 'tenants'?)"]
    shadow = "models:\n  - name: m\n    versions: [{name: v1}]\n    shadow: {version: v1, weight: 5}\n"
    assert "p.yaml:4: models[0].shadow.weight: unknown key 'weight'" in _issues_of(shadow)
    tenants = "tenants:\n  - {name: acme, tiers: gold}\n"
    assert _issues_of(tenants) == ["p.yaml:2: tenants[0].tiers: unknown key 'tiers' (did you mean 'tier'?)"]


def test_many_problems_are_listed_up_to_a_bound() -> None:
    """300 unknown keys: MAX_ISSUES listed, then one line for the rest (a file of 300,000 took 98 s)."""
    text = "".join(f"tenantz{i}: 1\n" for i in range(300))
    issues = _issues_of(text)
    assert len(issues) == MAX_ISSUES + 1
    assert issues[0] == "p.yaml:1: tenantz0: unknown key 'tenantz0' (did you mean 'tenants'?)"
    assert issues[-1] == f"p.yaml:{MAX_ISSUES + 1}: <document>: and at most {300 - MAX_ISSUES} more problems"
