"""The native gateway (gateway.enforcement native | auto, docs/native.md) on a real Envoy: it fails closed when its decision script fails, and policy swaps and key rotation reach it
over xDS and jwt_authn's JWKS fetch, with no call to meshgate per request.
(Equal decisions with ext_authz, request by request: tests/conformance/test_native.py; its configs
validate: tests/e2e/test_xds_validate.py.)"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from jwt.algorithms import RSAAlgorithm

from meshgate.policy import parse_policy
from meshgate.xds import compile_snapshot
from meshgate.xds._fast import FAST_STATS
from meshgate.xds._native import DECIDE_FILTER
from meshgate.xds.bootstrap import bootstrap_dict
from meshgate.xds.static import static_bootstrap
from tests.conformance.test_native import gateway_policy
from tests.conformance.upstream import EchoHTTP
from tests.harness.envoy import Envoy, dumped_routes
from tests.harness.meshgate import Meshgate
from tests.harness.procs import free_port, wait_until
from tests.harness.stack import Stack
from tests.unit.test_extauthz_support import LateJwks, mint, policy_doc, public_jwks, rsa_key


def _native_doc(upstream: int, port: int, **issuer: Any) -> dict[str, Any]:
    return gateway_policy(policy_doc(issuer=issuer or None), "native", upstream=upstream, port=port)


def _get(port: int, token: str) -> httpx.Response:
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        return client.post(
            f"http://127.0.0.1:{port}/v2/models/resnet/infer", json={}, headers={"authorization": f"Bearer {token}"}
        )


def test_the_guard_refuses_when_the_decision_script_fails(tmp_path: Path) -> None:
    upstream = EchoHTTP()
    stack = Stack(tmp_path)
    try:
        port = free_port()
        policy = parse_policy(yaml.safe_dump(_native_doc(upstream.port, port)), "native.yaml")
        config = static_bootstrap(compile_snapshot(policy))
        broken = json.loads(json.dumps(config))  # (plain dicts: the harness writes YAML)
        chain = broken["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        (lua,) = [f for f in chain["http_filters"] if f["name"] == DECIDE_FILTER]
        source = lua["typed_config"]["default_source_code"]["inline_string"]
        lua["typed_config"]["default_source_code"]["inline_string"] = source.replace(
            "local function decide(handle, headers, path)",
            "local function decide(handle, headers, path)\n  error('injected failure')",
        )
        envoy = stack.add(Envoy(broken, workdir=stack.workdir, name="broken")).start()
        response = _get(port, mint())
        assert response.status_code == 403  # the RBAC guard: nothing decided, nothing passes
        assert upstream_requests(envoy) == 0
    finally:
        stack.close()
        upstream.close()


def upstream_requests(envoy: Envoy) -> int:
    stats = envoy.stats(filter_regex=r"cluster\.model\|.*\.upstream_rq_total")
    assert stats, "no model cluster's counter: the check below would prove nothing"
    return sum(int(v) for v in stats.values())


def test_a_policy_swap_reaches_the_native_gateway(tmp_path: Path) -> None:
    upstream = EchoHTTP()
    stack = Stack(tmp_path)
    try:
        port = free_port()
        doc = _native_doc(upstream.port, port)
        doc["tenants"] = [t for t in doc["tenants"] if t["name"] != "globex"]
        meshgate = stack.add(Meshgate(doc, workdir=stack.workdir)).start()
        stack.add(Envoy(bootstrap_dict("swap", xds=meshgate.address("xds")), workdir=stack.workdir)).start()
        token = mint(tenant="globex", tier=None)
        first = _get(port, token)
        assert (first.status_code, first.json()["error"]) == (403, "unknown_tenant")
        doc["tenants"].append({"name": "globex", "tier": "free"})
        meshgate.policy_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        wait_until(lambda: _get(port, token).status_code == 200, 30, what="the new tenant admitted")
        assert _get(port, token).json()["echo"]["x-meshgate-tenant"] == "globex"
    finally:
        stack.close()
        upstream.close()


def test_a_rotated_key_is_fetched_by_envoy_itself(tmp_path: Path) -> None:
    upstream = EchoHTTP()
    stack = Stack(tmp_path)
    with LateJwks() as jwks:
        jwks.up()
        try:
            port = free_port()
            doc = _native_doc(upstream.port, port, jwks_uri=jwks.url, jwks_cache={"min_ttl": "1s"})
            meshgate = stack.add(Meshgate(doc, workdir=stack.workdir)).start()
            stack.add(Envoy(bootstrap_dict("rotate", xds=meshgate.address("xds")), workdir=stack.workdir)).start()
            wait_until(lambda: _get(port, mint()).status_code == 200, 30, what="keys fetched by Envoy")
            rotated = mint(kid="rsa-2", key=rsa_key("rotated"))
            before = _get(port, rotated)
            assert (before.status_code, before.json()["error"]) == (401, "token_unknown_kid")
            new = {**RSAAlgorithm.to_jwk(rsa_key("rotated").public_key(), as_dict=True), "kid": "rsa-2"}
            jwks.document = {"keys": [*public_jwks()["keys"], new]}
            wait_until(lambda: _get(port, rotated).status_code == 200, 30, what="the rotated key")
            assert jwks.hits >= 2
        finally:
            stack.close()
            upstream.close()


def test_route_refreshes_keep_the_quota_buckets_and_let_fresh_tokens_onto_the_fast_path(tmp_path: Path) -> None:
    """MESHGATE_XDS_FAST_REFRESH=1: the routes are compiled again every second (the fast routes' iat
    bound moves on, meshgate/xds/_fast.py). A token issued after the first compile takes the Lua path,
    then the fast path once a refresh passed its iat; the native quota counts on across refreshes (its
    buckets are the listener's) and refuses the request over its limit."""
    upstream = EchoHTTP()
    stack = Stack(tmp_path)
    try:
        port = free_port()
        doc = _native_doc(upstream.port, port)
        doc["quotas"] = [{"name": "per-user", "per": ["tenant", "user"], "limit": 3, "window": "day"}]
        for tenant in doc["tenants"]:
            tenant["quotas"] = ["per-user"]
        env = {"MESHGATE_XDS_FAST_REFRESH": "1", "MESHGATE_XDS_FAST_STATS": "true"}
        meshgate = stack.add(Meshgate(doc, workdir=stack.workdir, env=env)).start()
        envoy = stack.add(Envoy(bootstrap_dict("refresh", xds=meshgate.address("xds")), workdir=stack.workdir))
        envoy.start()
        fast = f"vhost.models.route.{FAST_STATS}.upstream_rq_completed"
        # (within the issuer's leeway of 5 s; the routes, compiled each second with a bound of about
        # the clock, pass it only ~4 s from now: room for the first request to reach the Lua path)
        iat = int(time.time()) + 4
        token = mint(tenant="globex", tier=None, sub="fresh", iat=iat)
        assert _iat_bound(envoy) <= iat  # the routes Envoy holds were compiled before the token
        first = _get(port, token)
        assert first.status_code == 200 and int(envoy.stat(fast)) == 0  # so the Lua path decided it
        wait_until(lambda: _iat_bound(envoy) > iat, 30, what="routes compiled after the token's iat")
        for _ in range(2):
            assert _get(port, token).status_code == 200
        assert int(envoy.stat(fast)) == 2  # the fast path, once the bound passed the token's iat
        refused = _get(port, token)  # the 4th of a limit of 3, across the refreshes
        assert refused.status_code == 429 and refused.headers["x-meshgate-quota"] == "per-user"
    finally:
        stack.close()
        upstream.close()


def _iat_bound(envoy: Envoy) -> float:
    """The iat bound of the fast routes Envoy holds now (the lowest, should they differ)."""
    dump = envoy.config_dump(resource="dynamic_route_configs")
    routes = dumped_routes(dump["configs"][0]["route_config"]["virtual_hosts"][0])
    return min(
        m["value"]["double_match"]["range"]["start"]
        for r in routes
        for m in r.get("match", {}).get("dynamic_metadata", [])
        if m["path"][-1]["key"] == "iat"
    )
