"""Native enforcement's fast path (meshgate/xds/_fast.py): where the fast routes go, what they match,
what they set, and that a refresh changes only the routes. Their decisions are proven equal to
extauthz's, request by request on real Envoys, in tests/conformance/test_native.py."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2 as early_pb2
from jwt.algorithms import RSAAlgorithm

from meshgate import contract
from meshgate.policy import Policy, parse_policy
from meshgate.xds import compile_snapshot
from meshgate.xds._fast import (
    CLOCK_MARGIN,
    FAST_STATS,
    IDENTITY_FILTER,
    OR_MAX,
    REGEX_CHARS,
    _any_of,
    alternations,
)
from meshgate.xds._native import BEARER_HEADER, JWT_FILTER, decision_table
from meshgate.xds._route_tree import flat_routes
from meshgate.xds._types import LISTENER, ROUTE
from meshgate.xds.compile import refresh_routes
from meshgate.xds.options import CompileOptions, options_from_env
from tests.unit.test_extauthz_support import policy_doc, rsa_key

NOW = 1_800_000_000.0


def _policy(mode: str = "native", **changes: Any) -> Policy:
    doc = copy.deepcopy(policy_doc())
    doc["gateway"] = {"enforcement": mode}
    if mode == "native":
        doc["api_keys"] = []
        doc["models"] = [m for m in doc["models"] if m.get("protocol", "v2-rest") == "v2-rest"]
    vault = [{"name": "v1", "endpoints": ["127.0.0.1:9401"]}]
    doc["models"].append({"name": "vault", "visibility": "private", "owner": "acme", "versions": vault})
    for key, value in changes.items():
        doc[key] = value
    return parse_policy(yaml.safe_dump(doc, sort_keys=False), "fast.yaml")


def _routes(policy: Policy, now: float = NOW) -> list[rc.Route]:
    snapshot = compile_snapshot(policy, now=now)
    return flat_routes(snapshot[ROUTE]["meshgate_routes"].message.virtual_hosts[0])


def _hcm(policy: Policy) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager()
    compile_snapshot(policy, now=NOW)[LISTENER]["meshgate_gateway"].message.filter_chains[0].filters[
        0
    ].typed_config.Unpack(hcm)
    return hcm


def _md(route: rc.Route) -> dict[str, Any]:
    return {"/".join(s.key for s in m.path): m for m in route.match.dynamic_metadata}


def test_fast_copies_go_right_before_their_route_and_the_versioned_catch_before_the_unversioned() -> None:
    names = [r.name for r in _routes(_policy()) if r.name.startswith("resnet|")]
    assert names == [
        "resnet|body_too_large",
        "resnet|length_required",
        "resnet|pin|v1|fast|test|free",
        "resnet|pin|v1|fast|test|gold|no-origin",
        "resnet|pin|v1",
        "resnet|pin|v2|fast|test|free",  # (invoker only: classifier-only grants v1)
        "resnet|pin|v2|fast|test|gold|no-origin",
        "resnet|pin|v2",
        "resnet|canary",  # (by the model header: after a decision)
        "resnet|canary|versioned",
        "resnet|canary|fast|test|free",
        "resnet|canary|fast|test|gold|no-origin",
        "resnet|canary",
    ]
    routes = {r.name: r for r in _routes(_policy())}
    catch = routes["resnet|canary|versioned"]
    assert catch.match.path_separated_prefix == "/v2/models/resnet/versions" and not catch.match.headers
    assert catch.route == routes["resnet|canary|fast|test|free"].route  # the canary's action


def test_the_order_of_fast_slow_and_catch_routes() -> None:
    names = [r.name for r in _routes(_policy())]
    for pin in ("v1", "v2"):
        slow = names.index(f"resnet|pin|{pin}")
        assert all(names.index(n) < slow for n in names if n.startswith(f"resnet|pin|{pin}|fast|"))
    catch = names.index("resnet|canary|versioned")
    assert catch > max(names.index(f"resnet|pin|{p}") for p in ("v1", "v2"))
    assert all(names.index(n) > catch for n in names if n.startswith("resnet|canary|fast|"))
    assert names.count("resnet|canary") == 2  # by header, then by path (last)
    assert names.index("resnet|canary|versioned") < len(names) - 1 - names[::-1].index("resnet|canary")


def test_what_a_fast_route_matches() -> None:
    routes = {r.name: r for r in _routes(_policy())}
    gold = routes["resnet|canary|fast|test|gold|no-origin"]
    md = _md(gold)
    assert all(m.filter == JWT_FILTER for m in md.values())
    assert md["payload/iss"].value.string_match.exact == "https://issuer.test"
    assert "header/alg" not in md  # (inline keys: pinned to the issuer's algorithms, below)
    assert md["payload/tenant"].value.string_match.exact == "acme"  # gold's only tenant
    roles = md["payload/roles"].value.list_match.one_of.or_match.value_matchers
    assert {r.string_match.exact for r in roles} == {"invoker", "classifier-only"}
    assert md["payload/sub"].value.string_match.safe_regex.regex == "[\\x20-\\x7e]{1,256}"
    iat = md["payload/iat"]
    assert iat.invert and iat.value.double_match.range.start == NOW - CLOCK_MARGIN + 5  # leeway 5 s
    assert md["payload/tier"].invert and md["payload/tier"].value.present_match
    headers = {(h.name, h.invert_match, h.WhichOneof("header_match_specifier")) for h in gold.match.headers}
    assert ("authorization", False, "string_match") in headers
    assert {("x-api-key", True, "present_match"), ("origin", True, "present_match"),
            ("sec-fetch-site", True, "present_match")} <= headers  # fmt: skip
    free = routes["resnet|canary|fast|test|free"]
    assert not {h.name for h in free.match.headers} & {"origin", "sec-fetch-site"}  # globex: any origin
    assert gold.stat_prefix == free.stat_prefix == ""  # (no route stats unless asked for: below)


def test_each_fast_copy_tests_the_path_first_and_counts_only_when_asked() -> None:
    """Envoy tests a route's headers before its path: the first header of a fast copy is the path's
    prefix, so a request for another model or version fails there, not after every claim matcher."""
    fast = [r for r in _routes(_policy()) if "|fast|" in r.name]
    assert len(fast) >= 6  # (pins v1, v2 and the canary, each for two tenant groups; vault's)
    for route in fast:
        first = route.match.headers[0]
        assert (first.name, first.string_match.prefix) == (":path", route.match.path_separated_prefix)
        assert not first.invert_match
    policy = _policy()
    counted = compile_snapshot(policy, CompileOptions(fast_stats=True), now=NOW)
    routes = flat_routes(counted[ROUTE]["meshgate_routes"].message.virtual_hosts[0])
    assert {r.stat_prefix for r in routes if "|fast|" in r.name} == {FAST_STATS}
    assert not {r.stat_prefix for r in routes if "|fast|" not in r.name} - {""}
    assert options_from_env({}, {"MESHGATE_XDS_FAST_STATS": "true"}).fast_stats
    assert not options_from_env({}, {}).fast_stats
    with pytest.raises(ValueError, match="MESHGATE_XDS_FAST_STATS"):
        options_from_env({}, {"MESHGATE_XDS_FAST_STATS": "maybe"})


def test_roles_per_version_and_private_models() -> None:
    routes = {r.name: r for r in _routes(_policy())}
    v2 = _md(routes["resnet|pin|v2|fast|test|free"])["payload/roles"].value.list_match.one_of
    assert v2.string_match.exact == "invoker"  # classifier-only grants v1 only
    vault = [n for n in routes if n.startswith("vault|") and "|fast|" in n]
    assert vault and all(n.endswith("|gold|no-origin") for n in vault)
    assert all(_md(routes[n])["payload/tenant"].value.string_match.exact == "acme" for n in vault)  # owner


def test_what_a_fast_route_sets() -> None:
    route = {r.name: r for r in _routes(_policy())}["resnet|pin|v1|fast|test|free"]
    per = route.typed_per_filter_config
    config = header_mutation_pb2.HeaderMutationPerRoute()
    assert per[IDENTITY_FILTER].Unpack(config)
    sets = {
        m.append.header.key: m.append.header.value
        for m in config.mutations.request_mutations
        if m.append.header.key
    }
    assert sets == {
        contract.TENANT_HEADER: f"%DYNAMIC_METADATA({JWT_FILTER}:payload:tenant)%",
        contract.USER_HEADER: f"%DYNAMIC_METADATA({JWT_FILTER}:payload:sub)%",
        contract.TIER_HEADER: "free",
        contract.MODEL_HEADER: "resnet",
        contract.VERSION_HEADER: "v1",
        contract.DECISION_ID_HEADER: "%REQ(x-request-id)%",
    }
    removed = {m.remove for m in config.mutations.request_mutations if m.remove}
    assert removed == {BEARER_HEADER, "authorization"}
    assert {"meshgate.native.decide", "meshgate.native.guard"} <= set(per)
    kept = _policy(auth={"api_key_header": "x-api-key", "forward_authorization": True})
    route = {r.name: r for r in _routes(kept)}["resnet|pin|v1|fast|test|free"]
    assert route.typed_per_filter_config[IDENTITY_FILTER].Unpack(config)
    assert {m.remove for m in config.mutations.request_mutations if m.remove} == {BEARER_HEADER}


def test_auto_turns_ext_authz_off_on_fast_routes_and_ext_authz_has_none() -> None:
    from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

    route = {r.name: r for r in _routes(_policy("auto"))}["resnet|canary|fast|test|free"]
    per_route = ext_authz_pb2.ExtAuthzPerRoute()
    assert (
        route.typed_per_filter_config["envoy.filters.http.ext_authz"].Unpack(per_route) and per_route.disabled
    )
    assert not [
        r for r in _routes(_policy("ext_authz")) if "|fast|" in r.name or r.name.endswith("|versioned")
    ]
    assert IDENTITY_FILTER not in [f.name for f in _hcm(_policy("ext_authz")).http_filters]


def test_the_listener_copies_authorization_cut_for_jwt_authn() -> None:
    quota = {"quotas": [{"name": "q", "per": ["user"], "limit": 5, "window": "day"}],
             "tenants": [{"name": "acme", "tier": "gold", "quotas": ["q"]}]}  # fmt: skip
    hcm = _hcm(_policy(**quota))
    names = [f.name for f in hcm.http_filters]
    assert names.index(IDENTITY_FILTER) > names.index("meshgate.native.guard")
    assert names.index(IDENTITY_FILTER) < min(
        i for i, n in enumerate(names) if n.startswith("meshgate.quota.")
    )
    early = early_pb2.HeaderMutation()
    hcm.early_header_mutation_extensions[0].typed_config.Unpack(early)
    assert early.mutations[0].remove_on_match.key_matcher.prefix == contract.HEADER_PREFIX  # first
    copy_ = early.mutations[1].append.header
    assert (copy_.key, copy_.value) == (BEARER_HEADER, "%REQ(authorization):8199%")  # 8192 + "Bearer "


def test_claims_the_matchers_cannot_name_leave_the_issuer_to_the_lua_path() -> None:
    doc = policy_doc()
    doc["issuers"][0]["claims"]["tenant"] = "org.tenant"
    names = [r.name for r in _routes(_policy(issuers=doc["issuers"]))]
    assert not [n for n in names if "|fast|" in n]


def test_a_refresh_changes_only_the_routes() -> None:
    policy = _policy(quotas=[{"name": "q", "per": ["user"], "limit": 5, "window": "day"}],
                     tenants=[{"name": "acme", "tier": "gold", "quotas": ["q"]}])  # fmt: skip
    before = compile_snapshot(policy, now=NOW)
    after = refresh_routes(before, policy, CompileOptions(), now=NOW + 20)
    assert after.versions[ROUTE] != before.versions[ROUTE]
    assert {t: v for t, v in after.versions.items() if t != ROUTE} == {
        t: v for t, v in before.versions.items() if t != ROUTE
    }  # the listener, with the quotas' buckets, is the same resource
    assert (
        after[ROUTE]["meshgate_routes"].message
        == compile_snapshot(policy, now=NOW + 20)[ROUTE]["meshgate_routes"].message
    )


@pytest.mark.parametrize("raw", ["0.5", "abc", "nan", "7200"])
def test_the_refresh_knob_refuses_what_is_not_a_sane_period(raw: str) -> None:
    with pytest.raises(ValueError, match="MESHGATE_XDS_FAST_REFRESH"):
        options_from_env({}, {"MESHGATE_XDS_FAST_REFRESH": raw})
    assert options_from_env({}, {"MESHGATE_XDS_FAST_REFRESH": "5"}).fast_refresh == 5.0
    assert options_from_env({}, {}).fast_refresh == 20.0


def _provider(policy: Policy) -> jwt_pb2.JwtProvider:
    (jwt,) = [f for f in _hcm(policy).http_filters if f.name == JWT_FILTER]
    config = jwt_pb2.JwtAuthentication()
    jwt.typed_config.Unpack(config)
    return config.providers["test"]


def test_inline_keys_are_pinned_to_the_issuers_algorithms_and_keep_their_kid() -> None:
    """jwt_authn takes any algorithm a key without `alg` verifies; extauthz only the issuer's. So Envoy
    gets one copy of each key per allowed algorithm it fits, with that alg, and its kid as it is (a key
    without one is tried for a token of any kid by both: KeySet.candidates); then it needs no header
    in the metadata, and neither the decision nor the fast routes check the alg."""
    issuers = copy.deepcopy(policy_doc()["issuers"])
    kidless = RSAAlgorithm.to_jwk(rsa_key("kidless").public_key(), as_dict=True)
    issuers[0]["jwks"]["keys"].append(kidless)
    policy = _policy(issuers=issuers)
    provider = _provider(policy)
    keys = json.loads(provider.local_jwks.inline_string)["keys"]
    pinned = {(k.get("kid"), k["alg"]) for k in keys}
    assert pinned == {("rsa-1", "RS256"), ("rsa-1", "PS256"), ("ec-1", "ES256"), ("ed-1", "EdDSA"),
                      (None, "RS256"), (None, "PS256")}  # fmt: skip
    assert len(keys) == len(pinned) and provider.header_in_metadata == ""
    issuer = decision_table(policy)["issuers"]["https://issuer.test"]
    assert issuer["pinned"] is True
    assert issuer["fits"]["RS256"]["kidless"] is True and issuer["fits"]["ES256"]["kidless"] is False


def test_keys_envoy_fetches_keep_the_alg_check() -> None:
    issuers = copy.deepcopy(policy_doc()["issuers"])
    del issuers[0]["jwks"]
    issuers[0]["jwks_uri"] = "https://idp.test/keys"
    policy = _policy(issuers=issuers)
    assert _provider(policy).header_in_metadata == "header"
    assert decision_table(policy)["issuers"]["https://issuer.test"]["pinned"] is False
    fast = next(r for r in _routes(policy) if "|fast|" in r.name)
    assert _md(fast)["header/alg"].value.or_match.value_matchers


def test_a_few_names_are_compared_one_by_one_more_in_one_alternation() -> None:
    assert _any_of(["acme"]).string_match.exact == "acme"
    few = _any_of(["b", "a", "c", "d"][:OR_MAX])
    assert [m.string_match.exact for m in few.or_match.value_matchers] == ["a", "b", "c", "d"][:OR_MAX]
    names = ["globex", "acme", "a.b", "x-y", "u_1"]
    many = _any_of(names)
    assert many.string_match.safe_regex.regex == r"a\.b|acme|globex|u_1|x\-y"  # sorted, escaped, full match
    huge = [f"t{i:04d}" for i in range(REGEX_CHARS // 5 + 1)]  # over one alternation's characters
    assert len(_any_of(huge).or_match.value_matchers) == len(huge)


def test_many_tenants_of_a_tier_are_split_over_fast_copies_within_the_regex_budget() -> None:
    parts = alternations([f"tenant-{i:05d}" for i in range(1000)])
    assert len(parts) > 1 and sorted(n for p in parts for n in p) == [f"tenant-{i:05d}" for i in range(1000)]
    assert all(len(_any_of(p).string_match.safe_regex.regex) <= REGEX_CHARS for p in parts)
    assert alternations(["b", "a"]) == [["a", "b"]]
    tenants = [{"name": "acme", "tier": "gold"}, *({"name": f"t{i:04d}", "tier": "free"} for i in range(600))]
    names = [r.name for r in _routes(_policy(tenants=tenants)) if "|fast|" in r.name and "|canary|" in r.name]
    free = [n for n in names if "|free" in n]
    assert len(free) == len(alternations([f"t{i:04d}" for i in range(600)])) > 1
    assert free[0].endswith("|free|1") and [n for n in names if "|gold" in n] == [
        n for n in names if n.endswith("gold")
    ]
