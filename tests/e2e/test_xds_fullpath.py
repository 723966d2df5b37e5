"""The whole path through a real Envoy configured only over ADS: API key -> meshgate extauthz ->
meshgate ratelimit -> canary route -> KServe model; 401, 403 and 429 where the policy says."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from meshgate.xds.bootstrap import bootstrap_dict
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import free_port

BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}
KEYS = {"acme": "demo-key-acme", "globex": "demo-key-globex"}


def test_key_authz_quota_and_canary(
    tmp_path: Path,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    demo = {v: model_server_factory("demo", v, wait=False) for v in ("v1", "v2")}
    other = model_server_factory("other", "v1", wait=False)
    for server in (*demo.values(), other):
        server.wait_ready()
    port = free_port()
    doc = {
        "version": 1,
        "gateway": {"port": port},
        "api_keys": [
            {"id": f"{t}-key", "tenant": t, "roles": [role], "sha256": hashlib.sha256(k.encode()).hexdigest()}
            for (t, k), role in zip(KEYS.items(), ("invoker", "other-only"), strict=True)
        ],
        "tenants": [{"name": "acme", "quotas": ["tenant-rpm"]}, {"name": "globex"}],
        "roles": [{"name": "invoker", "models": ["demo"]}, {"name": "other-only", "models": ["other"]}],
        "models": [
            {
                "name": "demo",
                "versions": [
                    {"name": v, "weight": w, "endpoints": [f"127.0.0.1:{demo[v].http_port}"]}
                    for v, w in (("v1", 90), ("v2", 10))
                ],
            },
            {"name": "other", "versions": [{"name": "v1", "endpoints": [f"127.0.0.1:{other.http_port}"]}]},
        ],
        "quotas": [{"name": "tenant-rpm", "per": ["tenant"], "limit": 5, "window": "minute"}],
    }
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    # extauthz and ratelimit on known ports: the compiled clusters point Envoy at them
    ports = {"extauthz": free_port(), "ratelimit": free_port()}
    extra = [arg for role, p in ports.items() for arg in (f"--{role}", f"127.0.0.1:{p}")]
    meshgate = meshgate_factory(policy_path, extra_args=extra)
    gateway = envoy_factory(bootstrap_dict("gateway-full", xds=meshgate.address("xds")))

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0, trust_env=False) as client:

        def infer(model: str, key: str | None) -> httpx.Response:
            headers = {"x-api-key": key} if key else {}
            return client.post(f"/v2/models/{model}/infer", json=BODY, headers=headers)

        assert infer("demo", None).status_code == 401
        assert infer("demo", "not-a-key").status_code == 401
        assert infer("demo", KEYS["globex"]).status_code == 403  # globex may only call `other`
        globex = infer("other", KEYS["globex"])
        assert globex.status_code == 200, globex.text  # no quota for globex
        answers = [infer("demo", KEYS["acme"]) for _ in range(5)]
        assert [r.status_code for r in answers] == [200] * 5
        assert {r.json()["model_version"] for r in answers} <= {"v1", "v2"}
        assert answers[0].json()["parameters"]["echo.x-meshgate-tenant"] == "acme"  # extauthz's headers
        limited = infer("demo", KEYS["acme"])
        assert limited.status_code == 429
        assert limited.headers.get("x-ratelimit-limit", "").startswith("5")
    assert gateway.stat("http.gateway.ext_authz.ok") >= 6
