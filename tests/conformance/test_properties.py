"""Properties of the rendered objects that make every target safe and equal, checked over several
policies (the corpus policy, examples/policy.yaml, the large fixture, seeded random ones): no control
plane runs here, so what istiod and Envoy Gateway will do is read from what they are given.

- Istio: the CUSTOM policy covers every path; one VirtualService, ending in a catch-all; only its own
  namespace binds to the Gateway; client x-meshgate-* removed before routing.
- Envoy Gateway: a catch-all route covered by the SecurityPolicy, the route recomputed after ext_authz,
  routes only from the namespaces meshgate renders into, client x-meshgate-* removed.
- Every rate limit descriptor meshgate's gateway or the Istio rendering sends matches the rule of
  meshgate's compiled limiter it should (run through the real Limiter), with the limit after tier
  arithmetic; Envoy Gateway's rules carry the same limits.
"""

from __future__ import annotations

import ast
import asyncio
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from google.protobuf.json_format import MessageToDict

from meshgate import contract
from meshgate.meshconfig import render
from meshgate.policy import Policy, load_policy, parse_policy
from meshgate.ratelimit import Descriptor, Limiter, MemoryStore, Request
from meshgate.ratelimit.compile import compile_policy
from meshgate.ratelimit.config import merge_domains
from meshgate.xds._route_tree import flat_routes
from meshgate.xds._routes import NO_ROUTE, route_configuration
from tests.conformance.corpus import CASES, policy_doc
from tests.unit.test_meshconfig_render import _random_policy

ROOT = Path(__file__).parents[2]
_RATELIMIT = "envoy.filters.http.ratelimit"


def _policies() -> Iterator[tuple[str, Policy]]:
    yield (
        "conformance",
        parse_policy(yaml.safe_dump(policy_doc(http_port=1, grpc_port=2, gateway_port=3)), "c"),
    )
    yield "example", load_policy(ROOT / "examples" / "policy.yaml")
    yield "large", load_policy(ROOT / "tests" / "fixtures" / "policies" / "large.yaml")
    for seed in range(8):
        yield f"random-{seed}", _random_policy(random.Random(seed))


POLICIES = dict(_policies())


def _kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


# --- who gets in ---------------------------------------------------------------------------------


def _istio_path_match(pattern: str, path: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return path.endswith(pattern[1:])
    return path == pattern


def _rule_matches(rule: Mapping[str, Any], path: str) -> bool:
    """Istio's AuthorizationPolicy rule semantics for the fields a path decides (an empty rule: any)."""
    for to in rule.get("to", []):
        operation = to["operation"]
        if "paths" in operation and not any(_istio_path_match(p, path) for p in operation["paths"]):
            return False
        if any(_istio_path_match(p, path) for p in operation.get("notPaths", [])):
            return False
    return set(rule) <= {"to"}


SAMPLE_PATHS = sorted({c.path for c in CASES} | {"/", "/x", "/admin/../v2/models/rest", "/v2/models/", "/v1"})


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_istio_checks_every_request(name: str) -> None:
    policy = POLICIES[name]
    objs = render(policy, "istio")
    (custom,) = [p for p in _kind(objs, "AuthorizationPolicy") if p["spec"].get("action") == "CUSTOM"]
    assert custom["spec"]["selector"]["matchLabels"] == dict(policy.mesh.istio.gateway_selector)
    for path in SAMPLE_PATHS:
        covered = any(_rule_matches(rule, path) for rule in custom["spec"]["rules"])
        assert covered or path in contract.PUBLIC_PATHS, path
    (vs,) = _kind(objs, "VirtualService")  # one: Istio orders merged VirtualServices by creation time
    assert vs["metadata"]["namespace"] == policy.mesh.istio.gateway_namespace
    last = vs["spec"]["http"][-1]
    assert "match" not in last and last["directResponse"]["status"] == 404  # the catch-all, last
    (gateway,) = _kind(objs, "Gateway")
    assert all(h.startswith("./") for s in gateway["spec"]["servers"] for h in s["hosts"])
    names = [r["name"] for r in vs["spec"]["http"]]
    assert len(names) == len(set(names))  # EnvoyFilter HTTP_ROUTE patches address routes by name
    patches = [p for f in _kind(objs, "EnvoyFilter") for p in f["spec"]["configPatches"]]
    strip = [p for p in patches if p["applyTo"] == "NETWORK_FILTER"]
    (early,) = strip[0]["patch"]["value"]["typed_config"]["early_header_mutation_extensions"]
    assert early["typed_config"]["mutations"] == [
        {"remove_on_match": {"key_matcher": {"prefix": "x-meshgate-"}}}
    ]
    clear = [p for p in patches if p["applyTo"] == "HTTP_FILTER" and p["patch"]["operation"] == "MERGE"]
    assert clear and clear[0]["patch"]["value"]["typed_config"]["clear_route_cache"] is True


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_envoy_gateway_checks_every_request(name: str) -> None:
    policy = POLICIES[name]
    objs = render(policy, "envoy-gateway")
    ns = policy.mesh.envoy_gateway.namespace
    (security,) = _kind(objs, "SecurityPolicy")
    assert security["spec"]["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "meshgate"}
    ]
    assert security["spec"]["extAuth"]["recomputeRoute"] is True
    catch_all = [r for r in _kind(objs, "HTTPRoute") if r["metadata"]["namespace"] == ns]
    (rule,) = catch_all[0]["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}] and "backendRefs" not in rule
    (gateway,) = _kind(objs, "Gateway")
    route_nss = {
        r["metadata"]["namespace"]
        for r in _kind(objs, "HTTPRoute") + _kind(objs, "GRPCRoute") + _kind(objs, "AIGatewayRoute")
    }
    for listener in gateway["spec"]["listeners"]:
        (expression,) = listener["allowedRoutes"]["namespaces"]["selector"]["matchExpressions"]
        assert set(expression["values"]) == route_nss
    (client,) = _kind(objs, "ClientTrafficPolicy")
    assert set(client["spec"]["headers"]["earlyRequestHeaders"]["remove"]) == set(contract.GATEWAY_HEADERS)


# --- the same limits everywhere ------------------------------------------------------------------


def _descriptor(
    actions: list[Mapping[str, Any]], headers: Mapping[str, str]
) -> tuple[tuple[str, str], ...] | None:
    """The entries Envoy builds from rate limit `actions` for a request with `headers` (None: it sends
    no descriptor, a header is missing)."""
    entries = []
    for action in actions:
        if "generic_key" in action:
            key = action["generic_key"].get("descriptor_key", "generic_key")
            entries.append((key, action["generic_key"]["descriptor_value"]))
        elif "request_headers" in action:
            value = headers.get(action["request_headers"]["header_name"])
            if value is None:
                return None
            entries.append((action["request_headers"]["descriptor_key"], value))
        elif "metadata" in action:  # the estimate charge's flag: no usage metadata, Envoy's default
            entries.append((action["metadata"]["descriptor_key"], action["metadata"]["default_value"]))
        else:
            raise AssertionError(f"action not evaluated here: {action}")
    return tuple(entries)


def _meshgate_limits(policy: Policy) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(model, rate limits) of each route meshgate's xds compiles."""
    for vhost in route_configuration(policy).virtual_hosts:
        for route in flat_routes(vhost):
            if route.name == NO_ROUTE or _RATELIMIT not in route.typed_per_filter_config:
                continue
            per_route = rate_limit_pb2.RateLimitPerRoute()
            route.typed_per_filter_config[_RATELIMIT].Unpack(per_route)
            yield (
                route.name.split("|")[0],
                MessageToDict(per_route, preserving_proto_field_name=True)["rate_limits"],
            )


def _istio_limits(policy: Policy) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    objs = render(policy, "istio")
    model_of = {}
    for http in [h for vs in _kind(objs, "VirtualService") for h in vs["spec"]["http"]]:
        for match in http.get("match", []):
            if contract.MODEL_HEADER in match.get("headers", {}):
                model_of[http["name"]] = match["headers"][contract.MODEL_HEADER]["exact"]
    for envoy_filter in _kind(objs, "EnvoyFilter"):
        for patch in envoy_filter["spec"]["configPatches"]:
            if patch["applyTo"] == "VIRTUAL_HOST":  # on every route of the gateway
                for model in policy.models:
                    yield model.name, patch["patch"]["value"]["rate_limits"]
            if patch["applyTo"] == "HTTP_ROUTE":
                name = patch["match"]["routeConfiguration"]["vhost"]["route"]["name"]
                config = patch["patch"]["value"]["typed_per_filter_config"][_RATELIMIT]
                yield model_of[name], config["rate_limits"]


def _expected(policy: Policy, quota_name: str, tenant: str, model: str) -> int | None:
    quota = next(q for q in policy.quotas if q.name == quota_name)
    if not contract.quota_plan(policy).applies(quota, model):
        return None  # a quota counts only the models its patterns name
    listed = quota.name in policy.tenant(tenant).quotas  # type: ignore[union-attr]
    if "tenant" in quota.per and not listed:
        return None  # a tenant that does not list a quota is not counted by it
    return contract.quota_limit(policy, quota, tenant if "tenant" in quota.per else None)


@pytest.mark.parametrize("target", ["meshgate", "istio"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_descriptor_matches_the_limiter(name: str, target: str) -> None:
    """What Envoy sends for each tenant on each model route, run through meshgate's real limiter."""
    policy = POLICIES[name]
    domain, tree = compile_policy(policy)
    limiter = Limiter(MemoryStore(), config=merge_domains({domain: ("policy", tree)}))
    limits = list((_meshgate_limits if target == "meshgate" else _istio_limits)(policy))
    assert limits or not policy.quotas or not policy.models
    checked = 0
    for model, rate_limits in limits:
        for tenant in policy.tenants:
            headers = {
                contract.TENANT_HEADER: tenant.name,
                contract.USER_HEADER: "u",
                contract.MODEL_HEADER: model,
            }
            for rate_limit in rate_limits:
                entries = _descriptor(rate_limit["actions"], headers)
                assert entries is not None
                if entries[0][0] == contract.USAGE_KEY:
                    continue  # chargeback counters: tests/unit/test_llm_chargeback.py
                assert entries[0][0] == contract.QUOTA_KEY
                decision = asyncio.run(limiter.decide(Request(domain, (Descriptor(entries, hits_addend=0),))))
                (status,) = decision.statuses
                assert status.limit == _expected(policy, entries[0][1], tenant.name, model), (
                    model,
                    tenant.name,
                    entries,
                )
                checked += 1
    assert checked or not policy.quotas or not policy.tenants


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_envoy_gateway_limits_are_the_limiter_limits(name: str) -> None:
    policy = POLICIES[name]
    objs = render(policy, "envoy-gateway")
    rules = [
        r for p in _kind(objs, "BackendTrafficPolicy") for r in p["spec"]["rateLimit"]["global"]["rules"]
    ]
    expected = []
    for quota in policy.quotas:
        tenants = (
            [t.name for t in policy.tenants if quota.name in t.quotas] if "tenant" in quota.per else [None]
        )
        expected += [(t, contract.quota_limit(policy, quota, t)) for t in sorted(tenants, key=str)]
    got = []
    for rule in rules:
        (selector,) = rule["clientSelectors"]
        tenant = next((h["value"] for h in selector["headers"] if h["name"] == contract.TENANT_HEADER), None)
        got.append((tenant, rule["limit"]["requests"]))
    assert sorted(got, key=str) == sorted(expected, key=str)


def test_a_dot_in_a_quota_name_stays_in_its_label() -> None:
    policy = POLICIES["conformance"]
    domain, tree = compile_policy(policy)
    node = tree.children[(contract.QUOTA_KEY, "rest.tenant-day")].children[("tenant", "acme-istio")]
    assert node.rule is not None and node.rule.full_key == f"{domain}.quota_rest.tenant-day.tenant_acme-istio"


# --- one contract --------------------------------------------------------------------------------


def test_no_compiler_keeps_a_copy_of_the_contract() -> None:
    """The header names and the reserved descriptor keys are written once, in meshgate/contract.py."""
    reserved = {
        contract.PHASE_KEY, contract.USAGE_KEY, contract.TRACE_KEY, contract.USED_KEY, contract.REFUSED_ENTRY,
        *contract.GATEWAY_HEADERS,
    }  # fmt: skip
    copies = []
    for path in sorted((ROOT / "meshgate").rglob("*.py")):
        if path.name == "contract.py" or "_proto" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
        }  # fmt: skip
        for node in ast.walk(tree):
            if (
                not isinstance(node, ast.Constant)
                or not isinstance(node.value, str)
                or id(node) in docstrings
            ):
                continue
            if node.value in reserved or node.value.startswith(contract.HEADER_PREFIX):
                copies.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert copies == []
