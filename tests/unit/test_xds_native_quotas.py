"""Native quotas compiled (meshgate/xds/_native_quotas.py, docs/native.md "Quotas"): which quotas can be
native, the local rate limit filters and their virtual host configs, and the gateways' local cluster.

`envoy_match` plays Envoy's part (source/extensions/filters/common/local_ratelimit: a request descriptor
picks the configured descriptor whose entries are equal, an empty configured value matching any value),
fed with the descriptors the compiled `rate_limits` actions produce from a request's headers: what one
compiler emits is checked against what the other side consumes, not against a copy of the rules.
"""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as lrl_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshgate import contract
from meshgate.policy import Policy, PolicyError
from meshgate.xds import compile_snapshot
from meshgate.xds._gateways import GATEWAYS_CLUSTER, Gateways, gateways_assignment
from meshgate.xds._native_quotas import (
    QUOTA_HEADER,
    native_quota_configs,
    native_quota_gaps,
    native_quotas,
    quota_filter,
)
from meshgate.xds._pb import pack
from meshgate.xds._route_tree import flat_routes
from meshgate.xds._types import ENDPOINT, LISTENER, ROUTE
from meshgate.xds.service import XdsService
from tests.unit.test_xds_support import model, policy

QUOTAS: list[dict[str, Any]] = [
    {"name": "user-day", "per": ["tenant", "user"], "limit": 10, "window": "day"},
    {"name": "tenant-minute", "per": "tenant", "limit": 100, "window": "minute", "models": ["chat"]},
    {"name": "per-model", "per": ["user", "model"], "limit": 7, "window": "hour", "shadow_mode": True},
    {"name": "tokens", "per": "tenant", "unit": "tokens", "limit": 1000, "window": "day", "models": ["chat"]},
    {"name": "sliding", "per": "user", "limit": 5, "window": "minute", "algorithm": "sliding_window"},
]


def native_policy(enforcement: str = "auto", **gateway: Any) -> Policy:
    return policy(
        model("iris", {"v1": 100}),
        model("chat", {"v1": 100}, port=9100, protocol="openai"),
        gateway={"port": 8080, "enforcement": enforcement, **gateway},
        tiers=[{"name": "gold", "multiplier": 2.5}, {"name": "odd", "multiplier": 0.29}],
        tenants=[
            {"name": "acme", "tier": "gold", "quotas": ["user-day", "tenant-minute", "tokens"]},
            {"name": "globex", "tier": "odd", "quotas": ["user-day"]},
            {"name": "initech"},
        ],
        quotas=QUOTAS,
    )


def request_descriptors(limit: rc.RateLimit, headers: dict[str, str]) -> list[tuple[str, str]] | None:
    """What Envoy builds from one rate limit's actions (None: an action did not apply, no descriptor)."""
    entries = []
    for action in limit.actions:
        kind = action.WhichOneof("action_specifier")
        if kind == "generic_key":
            entries.append((action.generic_key.descriptor_key, action.generic_key.descriptor_value))
        elif kind == "request_headers":
            value = headers.get(action.request_headers.header_name)
            if value is None:
                return None
            entries.append((action.request_headers.descriptor_key, value))
        elif kind == "header_value_match":
            match = action.header_value_match
            [matcher] = match.headers
            value = headers.get(matcher.name)
            hit = value is not None if matcher.present_match else value == matcher.string_match.exact
            if not hit:
                return None
            entries.append((match.descriptor_key, match.descriptor_value))
        else:
            raise AssertionError(f"an action the test does not model: {kind}")
    return entries


def envoy_match(config: lrl_pb2.LocalRateLimit, headers: dict[str, str]) -> list[int]:
    """max_tokens of each configured descriptor the request's descriptors pick (one per rate limit)."""
    picked = []
    for limit in config.rate_limits:
        entries = request_descriptors(limit, headers)
        if entries is None:
            continue
        for descriptor in config.descriptors:
            configured = [(e.key, e.value) for e in descriptor.entries]
            if len(configured) == len(entries) and all(
                ck == k and (cv == "" or cv == v) for (ck, cv), (k, v) in zip(configured, entries, strict=True)
            ):
                picked.append(descriptor.token_bucket.max_tokens)
                break
    return picked


def identity(tenant: str, user: str, model_name: str) -> dict[str, str]:
    return {
        contract.TENANT_HEADER: tenant,
        contract.USER_HEADER: user,
        contract.MODEL_HEADER: model_name,
    }


def test_gaps_name_the_field_and_why() -> None:
    gaps = dict(native_quota_gaps(native_policy()))
    assert set(gaps) == {("quotas", 3, "unit"), ("quotas", 4, "algorithm")}
    assert "stream end" in gaps[("quotas", 3, "unit")] and "sliding" in gaps[("quotas", 4, "algorithm")]
    with pytest.raises(PolicyError, match=r"quotas\[0\].limit: 2147483648 times the multiplier of tier 'big'"):
        policy(  # 2^33 fits neither Envoy's bucket nor ratelimit's answer: refused whatever the enforcement
            model("iris", {"v1": 100}),
            tiers=[{"name": "big", "multiplier": 4}],
            tenants=[{"name": "acme", "tier": "big", "quotas": ["q"]}],
            quotas=[{"name": "q", "per": "tenant", "limit": 2**31, "window": "day"}],
        )


def test_which_quotas_are_native_per_enforcement() -> None:
    assert native_quotas(native_policy("ext_authz")) == frozenset()
    assert native_quotas(native_policy("auto")) == {"user-day", "tenant-minute", "per-model"}
    valid = policy(
        model("iris", {"v1": 100}),
        gateway={"port": 8080, "enforcement": "native"},
        tenants=[{"name": "acme", "quotas": ["q"]}],
        quotas=[{"name": "q", "per": ["tenant", "user"], "limit": 3, "window": "minute"}],
    )  # (native refuses a policy with gaps: meshgate/policy)
    assert native_quotas(valid) == {"q"}


def test_one_filter_per_native_quota_right_before_the_router() -> None:
    snapshot = compile_snapshot(native_policy())
    listener = snapshot[LISTENER]["meshgate_gateway"].message
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    names = [f.name for f in hcm.http_filters]
    wanted = [quota_filter(q) for q in ("user-day", "tenant-minute", "per-model")]  # policy order
    assert names[-4:] == [*wanted, "envoy.filters.http.router"]
    assert names.index("envoy.filters.http.ext_authz") < names.index(wanted[0])
    configs = native_quota_configs(native_policy())
    for f in hcm.http_filters[-4:-1]:  # one set of buckets for every route, kept when routes change
        assert f.typed_config == pack(configs[f.name])
    host = snapshot[ROUTE]["meshgate_routes"].message.virtual_hosts[0]
    assert not host.typed_per_filter_config
    for route in flat_routes(host):
        assert not set(route.typed_per_filter_config) & set(wanted)


def test_descriptors_limits_and_tiers_as_envoy_picks_them() -> None:
    pol = native_policy()
    configs = native_quota_configs(pol)
    day, minute, shadow = (configs[quota_filter(q)] for q in ("user-day", "tenant-minute", "per-model"))
    [user_day] = [q for q in pol.quotas if q.name == "user-day"]
    # per tenant and user: each tenant's tier, through contract's arithmetic (0.29 x 10 is 2, not 3)
    assert envoy_match(day, identity("acme", "alice", "iris")) == [contract.quota_limit(pol, user_day, "acme")]
    assert envoy_match(day, identity("acme", "alice", "iris")) == [25]
    assert envoy_match(day, identity("globex", "bob", "chat")) == [contract.tier_limit(10, 0.29)] == [2]
    assert envoy_match(day, identity("initech", "carol", "iris")) == []  # initech does not list it
    # a request naming no model (a server-level call) counts for no quota
    assert envoy_match(day, {contract.TENANT_HEADER: "acme", contract.USER_HEADER: "alice"}) == []
    # a quota of some models: only theirs
    assert envoy_match(minute, identity("acme", "alice", "chat")) == [250]
    assert envoy_match(minute, identity("acme", "alice", "iris")) == []
    # not per tenant: every tenant, the quota's own limit; never enforced in shadow mode
    assert envoy_match(shadow, identity("initech", "carol", "iris")) == [7]
    assert shadow.filter_enforced.default_value.numerator == 0
    assert day.filter_enforced.default_value.numerator == 100


def test_buckets_per_window_shared_by_the_gateways() -> None:
    configs = native_quota_configs(native_policy())
    for config in configs.values():
        assert config.HasField("local_cluster_rate_limit")  # each request costs N tokens among N gateways
        assert not config.always_consume_default_token_bucket.value
        assert config.filter_enabled.default_value.numerator == 100
        for descriptor in config.descriptors:
            bucket = descriptor.token_bucket
            assert bucket.max_tokens == bucket.tokens_per_fill.value  # the limit, refilled over the window
            assert [e.value for e in descriptor.entries if e.key in ("user", "model")] in ([], [""], ["", ""])
    day = configs[quota_filter("user-day")]
    assert {d.token_bucket.fill_interval.seconds for d in day.descriptors} == {86400}
    headers = {h.header.key: h.header.value for h in day.response_headers_to_add}
    assert headers == {"x-envoy-ratelimited": "true", QUOTA_HEADER: "user-day",
                       "x-ratelimit-remaining": "0", "x-ratelimit-reset": "86400"}  # fmt: skip
    assert not configs[quota_filter("per-model")].response_headers_to_add  # shadow: never refuses
    quiet = native_quota_configs(native_policy(ratelimit={"response_headers": "none"}))[quota_filter("user-day")]
    assert [h.header.key for h in quiet.response_headers_to_add] == ["x-envoy-ratelimited", QUOTA_HEADER]


def test_global_shadow_mode_puts_every_native_quota_in_shadow() -> None:
    configs = native_quota_configs(native_policy(ratelimit={"shadow_mode": True}))
    assert len(configs) == 3
    assert {c.filter_enforced.default_value.numerator for c in configs.values()} == {0}


def test_meshgate_ratelimit_keeps_only_what_is_not_native() -> None:
    snapshot = compile_snapshot(native_policy())
    routes = {r.name: r for r in flat_routes(snapshot[ROUTE]["meshgate_routes"].message.virtual_hosts[0])}

    def quotas_of(route: str) -> set[str]:
        limits = rate_limit_pb2.RateLimitPerRoute()
        config = routes[route].typed_per_filter_config.get("envoy.filters.http.ratelimit")
        if config is None:
            return set()
        config.Unpack(limits)
        return {
            a.generic_key.descriptor_value
            for limit in limits.rate_limits
            for a in limit.actions
            if a.generic_key.descriptor_key == contract.QUOTA_KEY
        }

    assert quotas_of("chat|canary") == {"tokens", "sliding"}
    assert quotas_of("iris|canary") == {"sliding"}
    ext = compile_snapshot(native_policy("ext_authz"))
    hcm = hcm_pb2.HttpConnectionManager()
    ext[LISTENER]["meshgate_gateway"].message.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert not [f for f in hcm.http_filters if f.name.startswith("meshgate.quota.")]  # all on ratelimit


@pytest.mark.parametrize("nodes", [(), ("gw-b", "gw-a"), ("gw-a",)])
def test_the_gateways_cluster_has_one_endpoint_per_gateway(nodes: tuple[str, ...]) -> None:
    assignment = gateways_assignment(nodes)
    assert assignment.cluster_name == GATEWAYS_CLUSTER
    hosts = [e.endpoint for locality in assignment.endpoints for e in locality.lb_endpoints]
    assert [h.hostname for h in hosts] == sorted(nodes)
    assert len({h.address.pipe.path for h in hosts}) == len(nodes)  # distinct: Envoy counts each


def test_gateways_count_node_ids_while_a_stream_is_open() -> None:
    changes: list[tuple[str, ...]] = []
    gateways = Gateways()
    gateways.on_change = lambda: changes.append(gateways.members())
    gateways.join("gw-a")
    gateways.join("gw-a")  # a reconnect opening its new stream first
    gateways.join("gw-b")
    gateways.leave("gw-a")
    assert gateways.members() == ("gw-a", "gw-b") and len(gateways) == 2
    gateways.leave("gw-a")
    gateways.leave("gw-b")
    assert changes == [("gw-a",), ("gw-a", "gw-b"), ("gw-b",), ()]


def test_a_gateway_coming_or_going_changes_only_the_gateways_endpoints() -> None:
    """A route change would build new buckets (full) on every gateway: membership never touches one."""
    service = XdsService()
    service.prepare(native_policy())()
    before = service.cache.current
    assert before is not None and len(before[ENDPOINT][GATEWAYS_CLUSTER].message.endpoints[0].lb_endpoints) == 0
    service.gateways.join("gw-a")
    service.gateways.join("gw-b")
    after = service.cache.current
    assert after is not None
    hosts = after[ENDPOINT][GATEWAYS_CLUSTER].message.endpoints[0].lb_endpoints
    assert [h.endpoint.hostname for h in hosts] == ["gw-a", "gw-b"]
    assert after.versions[ROUTE] == before.versions[ROUTE] and after.versions[LISTENER] == before.versions[LISTENER]
    service.prepare(native_policy())()  # a policy reload keeps the gateways
    current = service.cache.current
    assert current is not None and len(current[ENDPOINT][GATEWAYS_CLUSTER].message.endpoints[0].lb_endpoints) == 2


def _filters(snapshot: Any) -> list[str]:
    hcm = hcm_pb2.HttpConnectionManager()
    snapshot[LISTENER]["meshgate_gateway"].message.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return [f.name for f in hcm.http_filters]


def test_auto_has_the_ratelimit_filter_only_when_a_route_calls_meshgate_ratelimit() -> None:
    """An idle ratelimit filter still costs every request (bench/envoy_instructions.py): auto, like
    native, leaves it out when every quota is native and no model charges counters at stream end."""
    assert "envoy.filters.http.ratelimit" in _filters(compile_snapshot(native_policy()))  # tokens, sliding
    local = policy(
        model("iris", {"v1": 100}),
        gateway={"port": 8080, "enforcement": "auto"},
        tenants=[{"name": "acme", "quotas": ["user-day"]}],
        quotas=QUOTAS[:1],
    )
    filters = _filters(compile_snapshot(local))
    assert "envoy.filters.http.ratelimit" not in filters and "meshgate.quota.user-day" in filters
    assert "envoy.filters.http.ratelimit" in _filters(compile_snapshot(native_policy("ext_authz")))
