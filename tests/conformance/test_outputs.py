"""What `meshgate render` writes can be applied as it is: one directory per target, namespaces only where
the policy names them (and then whole: Namespace, ResourceQuota, NetworkPolicy), the istiod values keep
the cluster's other ext_authz providers, and every feature a target drops or weakens is said (an error
with --strict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshgate.cli import main
from meshgate.meshconfig import gaps, render, render_all
from meshgate.meshconfig.istio import mesh_config
from meshgate.policy import parse_policy

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "policy.yaml"
_ISTIO_GROUPS = ("networking.istio.io", "security.istio.io")
_EG_GROUPS = ("gateway.networking.k8s.io", "gateway.envoyproxy.io", "aigateway.envoyproxy.io")

POLICY = """
tenants:
  - {name: acme, namespace: team-acme, quotas: [rpm]}
  - {name: globex, quotas: [rpm]}
roles: [{name: all, models: ["*"]}]
models:
  - {name: m, versions: [{name: v1, endpoints: ["h:1"]}]}
  - {name: n, namespace: vision, versions: [{name: v1, endpoints: ["h:1"]}]}
quotas:
  - {name: rpm, per: tenant, limit: 10, window: minute, algorithm: sliding_window}
"""


def _docs(directory: Path) -> list[dict[str, Any]]:
    return [d for f in sorted(directory.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]


def test_target_all_writes_one_directory_per_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["render", "--policy", str(EXAMPLE), "--target", "all", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["envoy-gateway", "istio", "kserve"]
    istio, eg = _docs(out / "istio"), _docs(out / "envoy-gateway")
    assert not [d for d in istio if d["apiVersion"].startswith(_EG_GROUPS)]
    assert not [d for d in eg if d["apiVersion"].startswith(_ISTIO_GROUPS)]
    capsys.readouterr()
    assert main(["render", "--policy", str(EXAMPLE), "--target", "all"]) == 2  # one stream would mix them
    assert "one directory per target" in capsys.readouterr().err


def test_namespaces_only_where_the_policy_says() -> None:
    policy = parse_policy(POLICY, "p.yaml")
    for target, objs in render_all(policy).items():
        namespaced = {(o["kind"], o["metadata"].get("namespace")) for o in objs}
        # model m has no namespace: its objects go to `default`, but nothing namespace-wide does
        wide = {"PeerAuthentication", "AuthorizationPolicy", "NetworkPolicy", "ResourceQuota"}
        assert not {k for k, ns in namespaced if ns == "default" and k in wide}, target
        names = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
        assert "default" not in names and "globex" not in names, target  # never a tenant's name unasked
        assert not {ns for _, ns in namespaced if ns == "globex"}, target
    istio = render(policy, "istio")
    team = {o["kind"] for o in istio if o["metadata"].get("namespace") == "team-acme"}
    assert team == {"ResourceQuota", "NetworkPolicy", "AuthorizationPolicy"}
    assert {"team-acme", "vision"} <= {o["metadata"]["name"] for o in istio if o["kind"] == "Namespace"}
    (quota,) = [o for o in istio if o["kind"] == "ResourceQuota"]
    assert quota["spec"]["hard"] == {"services.loadbalancers": "0", "services.nodeports": "0"}
    (netpol,) = [o for o in istio if o["kind"] == "NetworkPolicy"]
    (source,) = netpol["spec"]["ingress"][0]["from"]
    assert set(source["namespaceSelector"]["matchExpressions"][0]["values"]) == {
        "team-acme",
        "istio-system",
        "meshgate",
    }
    assert {o["metadata"]["namespace"] for o in istio if o["kind"] == "PeerAuthentication"} == {"vision"}


def test_mesh_config_keeps_the_cluster_providers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = parse_policy(POLICY, "p.yaml")
    oauth = {
        "name": "oauth2-proxy",
        "envoyExtAuthzHttp": {"service": "oauth2.sso.svc.cluster.local", "port": 4180},
    }
    stale = {
        "name": "meshgate",
        "envoyExtAuthzGrpc": {"service": "old.meshgate.svc.cluster.local", "port": 1},
    }
    values = mesh_config(policy, {"meshConfig": {"extensionProviders": [oauth, stale]}})
    providers = values["meshConfig"]["extensionProviders"]
    assert [p["name"] for p in providers] == ["oauth2-proxy", "meshgate"]
    assert providers[0] == oauth and providers[1]["envoyExtAuthzGrpc"]["port"] == 9001
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "data": {"mesh": yaml.safe_dump({"extensionProviders": [oauth]})},
    }
    path = tmp_path / "istio.yaml"
    path.write_text(yaml.safe_dump(configmap))
    policy_path = tmp_path / "p.yaml"
    policy_path.write_text(POLICY)
    assert (
        main(["render", "--policy", str(policy_path), "--mesh-config", "--existing-mesh-config", str(path)])
        == 0
    )
    out = yaml.safe_load(capsys.readouterr().out)
    assert [p["name"] for p in out["meshConfig"]["extensionProviders"]] == ["oauth2-proxy", "meshgate"]


def test_what_a_target_cannot_enforce_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = parse_policy(POLICY, "p.yaml")
    said = [str(g) for g in gaps(policy, "envoy-gateway")]
    assert any("dropped: sliding windows (rpm)" in g for g in said)
    assert any("all-or-nothing" in g for g in said)
    assert any("tenant isolation (globex)" in g for g in said)
    assert gaps(policy, "kserve") == []
    policy_path = tmp_path / "p.yaml"
    policy_path.write_text(POLICY)
    out = tmp_path / "out"
    args = ["render", "--policy", str(policy_path), "--target", "envoy-gateway", "-o", str(out)]
    assert main(args) == 0
    assert "warning: envoy-gateway: dropped: sliding windows (rpm)" in capsys.readouterr().err
    strict = tmp_path / "strict"
    assert main([*args[:-1], str(strict), "--strict"]) == 1
    assert "refused: envoy-gateway: dropped: sliding windows (rpm)" in capsys.readouterr().err
    assert not strict.exists()  # nothing written
