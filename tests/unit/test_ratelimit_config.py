"""envoyproxy/ratelimit YAML: one bad-config fixture per error with its exact message; the policy's
quotas compiled into the same tree; the proto <-> core conversion (pure, no sockets)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from meshgate.policy import parse_policy
from meshgate.ratelimit import (
    ConfigError,
    Decision,
    Descriptor,
    Request,
    Status,
    compile_policy,
    parse_config,
)
from meshgate.ratelimit.config import load_config_dir, merge_domains
from meshgate.ratelimit.model import RateLimitConfig
from meshgate.ratelimit.service import to_request, to_response

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ratelimit"
BAD = FIXTURES / "bad"

EXPECTED = {
    "invalid_yaml": "4: <document>: invalid YAML: did not find expected ',' or '}'",
    "not_a_mapping": "1: <document>: expected a mapping, got a list",
    "duplicate_yaml_key": "2: domain: duplicate key 'domain'",
    "unknown_key": "4: descriptors[0].rate_limit.request_per_unit: unknown key 'request_per_unit' "
    "(did you mean 'requests_per_unit'?)",
    "empty_domain": "1: domain: config file cannot have empty domain",
    "empty_key": "3: descriptors[0].key: descriptor has empty key",
    "descriptor_not_a_mapping": "3: descriptors[0]: expected a mapping, got str 'key-a'",
    "duplicate_composite_key": "5: descriptors[1]: duplicate descriptor composite key 'd.a_b'",
    "invalid_unit": "4: descriptors[0].rate_limit.unit: invalid rate limit unit 'parsec'",
    "unlimited_with_unit": "4: descriptors[0].rate_limit: should not specify rate limit unit when unlimited",
    "empty_replaces": "7: descriptors[0].rate_limit.replaces[0].name: should not have an empty replaces entry",
    "replaces_itself": "8: descriptors[0].rate_limit.replaces[0].name: "
    "replaces should not contain name of same descriptor",
    "wrong_type": "4: descriptors[0].rate_limit.requests_per_unit: expected an integer, got str '5'",
    "negative_limit": "4: descriptors[0].rate_limit.requests_per_unit: must be from 0 to 4294967295, got -1",
    "shadow_not_bool": "4: descriptors[0].shadow_mode: expected true or false, got str 'yes'",
    "bad_algorithm": "4: descriptors[0].rate_limit.algorithm: 'token_bucket' is not one of "
    "'fixed_window' or 'sliding_window'",
}


def test_every_fixture_has_an_expected_message() -> None:
    assert sorted(p.stem for p in BAD.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_config_message(name: str) -> None:
    path = BAD / f"{name}.yaml"
    with pytest.raises(ConfigError) as caught:
        parse_config(path.read_text(), str(path))
    assert [str(i) for i in caught.value.issues] == [f"{path}:{EXPECTED[name]}"]


def test_duplicate_domain_across_files() -> None:
    folder = FIXTURES / "duplicate_domain"
    with pytest.raises(ConfigError) as caught:
        load_config_dir(folder)
    assert str(caught.value) == (
        f"{folder / 'b.yaml'}:1: domain: duplicate domain 'd' in config file (first in {folder / 'a.yaml'})"
    )


def test_a_directory_with_bad_files_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_dir(BAD)
    assert len(caught.value.issues) == len(EXPECTED)


def test_policy_domain_clashing_with_a_file() -> None:
    domain, tree = compile_policy(parse_policy("gateway: {ratelimit: {domain: compat}}"))
    files = load_config_dir(FIXTURES / "good")
    with pytest.raises(ConfigError, match=re.escape("duplicate domain 'compat' (also in policy.yaml)")):
        merge_domains({domain: ("policy.yaml", tree)}, files)


def test_good_config_tree() -> None:
    config = merge_domains(load_config_dir(FIXTURES / "good"))
    rule = config.match("compat", (("path", "/api/x"),))
    assert rule is not None and (rule.requests_per_unit, rule.unit, rule.full_key) == (2, "minute", "compat.path_/api/*")
    nested = config.match("compat", (("client", "mobile"), ("remote_address", "10.0.0.1")))
    assert nested is not None and nested.unlimited
    premium = config.match("compat", (("account", "premium"),))
    assert premium is not None and premium.replaces == ("standard",)
    assert config.match("compat", (("client", "mobile"),)) is None


POLICY = """
gateway: {ratelimit: {domain: gw}}
tiers: [{name: gold, multiplier: 2.5}]
tenants:
  - {name: acme, tier: gold, quotas: [user-rps, tokens, per-model]}
  - {name: globex, quotas: [user-rps]}
models:
  - {name: llama-chat, protocol: openai, versions: [{name: v1, endpoints: ["127.0.0.1:1"]}]}
  - {name: resnet, versions: [{name: v1, endpoints: ["127.0.0.1:2"]}]}
quotas:
  - {name: user-rps, per: [user, tenant], limit: 60, window: second}
  - {name: tokens, per: tenant, unit: tokens, limit: 20000, window: minute, models: [llama-chat]}
  - {name: per-model, per: [tenant, model], limit: 7, window: hour, models: ["llama*"], algorithm: sliding_window}
  - {name: global-model, per: model, limit: 1000, window: day, shadow_mode: true}
"""


def test_compile_policy_quotas() -> None:
    domain, tree = compile_policy(parse_policy(POLICY))
    config = RateLimitConfig({domain: tree})
    assert domain == "gw"

    def limit(*entries: tuple[str, str]) -> tuple[int, str, str] | None:
        rule = config.match("gw", entries)
        return None if rule is None else (rule.requests_per_unit, rule.unit, rule.full_key)

    # entries in the order quota, tenant, user, model whatever the order of `per`; tiers multiply
    assert limit(("quota", "user-rps"), ("tenant", "acme"), ("user", "u1")) == (
        150, "second", "gw.quota_user-rps.tenant_acme.user")
    assert limit(("quota", "user-rps"), ("tenant", "globex"), ("user", "u1")) == (
        60, "second", "gw.quota_user-rps.tenant_globex.user")
    assert limit(("quota", "tokens"), ("tenant", "acme")) == (50000, "minute", "gw.quota_tokens.tenant_acme")
    assert limit(("quota", "tokens"), ("tenant", "globex")) is None  # globex does not list it
    assert limit(("quota", "user-rps"), ("tenant", "initech"), ("user", "u")) is None
    assert limit(("quota", "per-model"), ("tenant", "acme"), ("model", "llama-chat"))[:2] == (17, "hour")  # type: ignore[index]
    assert limit(("quota", "per-model"), ("tenant", "acme"), ("model", "resnet")) is None
    assert limit(("quota", "global-model"), ("model", "resnet"))[:2] == (1000, "day")  # type: ignore[index]
    sliding = config.match("gw", (("quota", "per-model"), ("tenant", "acme"), ("model", "llama-chat")))
    shadow = config.match("gw", (("quota", "global-model"), ("model", "x")))
    assert sliding is not None and sliding.algorithm == "sliding_window"
    assert shadow is not None and shadow.shadow_mode


def test_compile_is_pure() -> None:
    policy = parse_policy(POLICY)
    assert compile_policy(policy) == compile_policy(policy)


def test_proto_conversion() -> None:
    pb = rls_pb2.RateLimitRequest(domain="d", hits_addend=3)
    one = pb.descriptors.add()
    one.entries.add(key="a", value="1")
    two = pb.descriptors.add()
    two.entries.add(key="b", value="2")
    two.limit.requests_per_unit = 9
    two.limit.unit = rls_pb2.RateLimitResponse.RateLimit.MINUTE
    two.hits_addend.value = 0
    expected = Request(
        "d", (Descriptor((("a", "1"),)), Descriptor((("b", "2"),), limit=(9, "minute"), hits_addend=0)), 3
    )
    assert to_request(pb) == expected
    decision = Decision(True, (Status(), Status(True, 9, "minute", 0, 42)), "x-ratelimit")
    out = to_response(decision)
    assert out.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert [s.code for s in out.statuses] == [rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT]
    assert not out.statuses[0].HasField("current_limit")
    assert out.statuses[1].current_limit.requests_per_unit == 9
    assert out.statuses[1].duration_until_reset.seconds == 42
    assert [(h.key, h.value) for h in out.response_headers_to_add] == [
        ("X-RateLimit-Limit", "9"), ("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "42")
    ]
