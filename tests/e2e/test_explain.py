"""`meshgate explain` agrees with what the real gateway does: for each request of a corpus (a missing
key, a tenant without the role, allowed canary traffic, an A/B-pinned request, a request over quota),
`meshgate explain --addr` (the running meshgate's live policy, routes and counters) is asked first,
then the request goes through Envoy 1.40 to the KServe model, and the two must agree: the status, the
deny code, the version that answered (one of the clusters explain named), the quota that refused.
The same requests explained from the policy file alone (`--policy`) give the same decision and route,
without the counters. Explaining counts nothing: the quota still admits exactly its limit.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from meshgate import binaries
from meshgate.xds.bootstrap import bootstrap_dict
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import child_env, free_port

BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}
KEYS = {"acme": "explain-key-acme", "globex": "explain-key-globex"}
PATH = "/v2/models/demo/infer"


def policy(port: int, demo: dict[str, ModelServer]) -> dict[str, Any]:
    return {
        "version": 1,
        "gateway": {"port": port},
        "api_keys": [
            {"id": f"{t}-key", "tenant": t, "roles": ["invoker"] if t == "acme" else ["nothing"],
             "sha256": hashlib.sha256(k.encode()).hexdigest()}
            for t, k in KEYS.items()
        ],
        "tenants": [{"name": "acme", "quotas": ["acme-per-day"]}, {"name": "globex"}],
        "roles": [{"name": "invoker", "models": ["demo"]}, {"name": "nothing", "models": ["other"]}],
        "models": [
            {"name": "demo", "ab": [{"header": "x-canary", "value": "1", "version": "v2"}], "versions": [
                {"name": v, "weight": w, "endpoints": [f"127.0.0.1:{demo[v].http_port}"]}
                for v, w in (("v1", 90), ("v2", 10))]},
            {"name": "other", "versions": [{"name": "v1", "endpoints": [f"127.0.0.1:{demo['v1'].http_port}"]}]},
        ],
        "quotas": [{"name": "acme-per-day", "per": ["tenant"], "limit": 3, "window": "day"}],
    }  # fmt: skip


def explain(source: list[str], headers: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """`meshgate explain ... --json`; the credential goes in a headers file, off the command line."""
    header_file = tmp_path / "headers.txt"
    header_file.write_text("".join(f"{k}: {v}\n" for k, v in headers.items()))
    body = tmp_path / "body.json"
    body.write_text(json.dumps(BODY))
    argv = [*binaries.meshgate_argv(), "explain", *source, "--headers-file", str(header_file),
            "--data-file", str(body), "--json", PATH]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=child_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert all(v not in done.stdout for v in KEYS.values())  # a credential is used, never printed
    explained: dict[str, Any] = json.loads(done.stdout)
    return explained


CORPUS: list[tuple[str, dict[str, str]]] = [
    ("no key", {}),
    ("no role for the model", {"x-api-key": KEYS["globex"]}),
    ("canary", {"x-api-key": KEYS["acme"]}),
    ("pinned to v2 by A/B header", {"x-api-key": KEYS["acme"], "x-canary": "1"}),
    ("third of three", {"x-api-key": KEYS["acme"], "x-meshgate-tenant": "globex"}),  # a forged header too
    ("over quota", {"x-api-key": KEYS["acme"]}),
]


def test_explain_agrees_with_the_gateway_on_a_corpus(
    tmp_path: Path,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    demo = {v: model_server_factory("demo", v, wait=False) for v in ("v1", "v2")}
    for server in demo.values():
        server.wait_ready()
    port = free_port()
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy(port, demo), sort_keys=False))
    mg = meshgate_factory(policy_path)
    envoy_factory(bootstrap_dict("gateway-explain", xds=mg.address("xds")))

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0, trust_env=False) as client:
        for name, headers in CORPUS:
            live = explain(["--addr", mg.address("xds")], headers, tmp_path)
            offline = explain(["--policy", str(policy_path)], headers, tmp_path)
            answer = client.post(PATH, json=BODY, headers=headers)
            status = answer.status_code
            predicted = live["outcome"]["status"]
            assert (predicted or 200) == status, (name, live["outcome"], answer.text)
            # the file alone: the same decision and route (it has no counters: remaining unknown)
            for part in ("identity", "decision", "model", "route"):
                assert offline[part] == live[part], (name, part)
            if status in (401, 403):
                assert answer.json()["error"] == live["decision"]["code"], name
                assert live["route"] is None  # refused before routing
            elif status == 200:
                clusters = {c["cluster"] for c in live["route"]["clusters"]}
                assert f"model|demo|{answer.json()['model_version']}" in clusters, (name, clusters)
                (quota,) = live["quotas"]
                assert quota["quota"] == "acme-per-day" and quota["would_refuse"] is False
                assert "remaining" not in offline["quotas"][0]
            else:
                (quota,) = live["quotas"]
                assert quota == {**quota, "quota": "acme-per-day", "remaining": 0, "would_refuse": True}
                assert answer.headers["ratelimit-policy"] == '"acme-per-day";q=3;w=86400'
                assert offline["outcome"]["status"] is None  # without the counters it cannot know
            if name == "pinned to v2 by A/B header":
                assert live["route"]["name"] == "demo|ab|x-canary=1"
                assert live["route"]["clusters"] == [{"cluster": "model|demo|v2", "weight": 100}]
                assert answer.json()["model_version"] == "v2"
            if name == "canary":
                assert live["route"]["clusters"] == [
                    {"cluster": "model|demo|v1", "weight": 90}, {"cluster": "model|demo|v2", "weight": 10}]
                assert live["quotas"][0]["remaining"] == 3  # nothing counted yet (explaining counts none)
            if name == "third of three":
                assert live["request"]["client_headers_removed"] == ["x-meshgate-tenant"]
                assert live["identity"]["tenant"] == "acme"
