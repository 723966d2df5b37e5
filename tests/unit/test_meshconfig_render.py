"""meshgate render: golden files per target, determinism, and properties over random valid policies.

Regenerate the golden files after an intended change with:
    MESHGATE_UPDATE_GOLDEN=1 pytest tests/unit/test_meshconfig_render.py
and review the diff.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshgate.cli import main
from meshgate.meshconfig import dump_yaml, render, render_all, render_files, validate_objects
from meshgate.meshconfig._common import model_name
from meshgate.meshconfig.render import mesh_config_yaml
from meshgate.policy import Policy, load_policy, parse_policy

ROOT = Path(__file__).parents[2]
GOLDEN = ROOT / "tests" / "golden" / "meshconfig"
POLICIES = {
    "example": ROOT / "examples" / "policy.yaml",
    "large": ROOT / "tests" / "fixtures" / "policies" / "large.yaml",
}
TARGETS = ("istio", "envoy-gateway", "kserve")
UPDATE = os.environ.get("MESHGATE_UPDATE_GOLDEN") == "1"


def _check_golden(path: Path, text: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with MESHGATE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs: run with MESHGATE_UPDATE_GOLDEN=1 and review the diff"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_golden(name: str, target: str) -> None:
    policy = load_policy(POLICIES[name])
    _check_golden(GOLDEN / name / f"{target}.yaml", dump_yaml(render(policy, target)))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_golden_mesh_config(name: str) -> None:
    _check_golden(
        GOLDEN / name / "istio-meshconfig.values.yaml", mesh_config_yaml(load_policy(POLICIES[name]))
    )


def test_all_is_one_list_per_target_in_apply_order() -> None:
    policy = load_policy(POLICIES["large"])
    everything = render_all(policy)
    assert list(everything) == ["kserve", "istio", "envoy-gateway"]
    for target, objs in everything.items():
        assert objs == render(policy, target)  # type: ignore[arg-type]
    kinds = [o["kind"] for o in everything["istio"]]
    assert kinds.index("Namespace") < kinds.index("VirtualService") < kinds.index("EnvoyFilter")
    with pytest.raises(ValueError, match="render_all"):
        render(policy, "all")


def test_every_object_is_labelled_and_uniquely_named() -> None:
    for path in POLICIES.values():
        for objs in render_all(load_policy(path)).values():
            seen = set()
            for obj in objs:
                meta = obj["metadata"]
                assert meta["labels"]["app.kubernetes.io/managed-by"] == "meshgate"
                key = (obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
                assert key not in seen, key
                seen.add(key)


def test_namespaces_come_from_the_policy() -> None:
    policy = load_policy(POLICIES["large"])
    objs = render(policy, "istio")
    (vs,) = [o for o in objs if o["kind"] == "VirtualService"]
    assert vs["metadata"]["namespace"] == "istio-system"
    rules = {o["metadata"]["name"]: o["metadata"]["namespace"] for o in objs if o["kind"] == "DestinationRule"}
    assert rules["resnet50"] == "vision" and rules["llama-chat"] == "nlp"
    isolation = {
        o["metadata"]["namespace"] for o in objs if o["metadata"]["name"] == "meshgate-tenant-isolation"
    }
    assert isolation == {"team-acme"}  # the only tenant namespace the policy declares
    peer = {o["metadata"]["namespace"] for o in objs if o["kind"] == "PeerAuthentication"}
    assert peer == {"vision", "nlp"}


def test_files_one_per_kind(tmp_path: Path) -> None:
    policy = load_policy(POLICIES["example"])
    files = render_files(render(policy, "istio"))
    assert "virtualservice.networking.istio.io.yaml" in files and "gateway.networking.istio.io.yaml" in files
    for name, text in files.items():
        kinds = {d["kind"] for d in yaml.safe_load_all(text)}
        assert len(kinds) == 1, name


def test_cli_writes_one_file_per_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["render", "--policy", str(POLICIES["example"]), "--target", "kserve", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["service.core.yaml"]
    assert capsys.readouterr().out == f"{out / 'service.core.yaml'}\n"
    assert main(["render", "--policy", str(POLICIES["example"]), "--target", "istio"]) == 0
    stream = capsys.readouterr().out
    assert stream == dump_yaml(render(load_policy(POLICIES["example"]), "istio"))


# --- properties over random valid policies ------------------------------------------------------


def _random_policy(rng: random.Random) -> Policy:
    tenants = [f"t{i}" for i in range(rng.randint(1, 3))]
    models: list[dict[str, Any]] = []
    for m in range(rng.randint(1, 5)):
        protocol = rng.choice(["v2-rest", "v2-grpc", "openai"])
        name = rng.choice([f"m{m}", f"Model_{m}.x", f"model-{m}"])
        n = rng.randint(1, 4)
        cuts = sorted(rng.sample(range(1, 100), n - 1)) if n > 1 else []
        weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
        versions = [
            {
                "name": f"v{j}",
                "weight": w,
                "endpoints": [f"h{j}:8080"],
                "storage_uri": f"s3://b/{m}/{j}",
                "gpus": rng.randint(0, 2),
            }
            for j, w in enumerate(weights)
        ]
        model: dict[str, Any] = {
            "name": name,
            "protocol": protocol,
            "versions": versions,
            "namespace": rng.choice(["default", "ns-a", "ns-b"]),
        }
        if rng.random() < 0.5:
            versions.append({"name": "shadow", "weight": 0, "endpoints": ["s:1"]})
            model["shadow"] = {"version": "shadow", "percent": rng.choice([0.5, 5, 12.5, 100])}
        if rng.random() < 0.5:
            model["ab"] = [
                {"header": "x-ab", "value": f"b{k}", "version": rng.choice(versions)["name"]}
                for k in range(rng.randint(1, 2))
            ]
        if rng.random() < 0.3:
            model |= {"visibility": "private", "owner": rng.choice(tenants)}
        models.append(model)
    quotas = [
        {
            "name": "q",
            "per": rng.choice([["tenant"], ["tenant", "user"], ["model"]]),
            "limit": 5,
            "window": "minute",
            "unit": rng.choice(["requests", "tokens"]),
        }
    ]
    doc = {
        "tenants": [{"name": t, "quotas": ["q"]} for t in tenants],
        "models": models,
        "quotas": quotas,
        "roles": [{"name": "all", "models": ["*"]}],
    }
    return parse_policy(yaml.safe_dump(doc), "<random>")


def _seeds() -> Iterator[int]:
    yield from range(40)


def _by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


@pytest.mark.parametrize("seed", list(_seeds()))
def test_properties_of_random_policies(seed: int) -> None:
    policy = _random_policy(random.Random(seed))
    targets = render_all(policy)
    assert render_all(policy) == targets, "render is not deterministic"
    for target_objs in targets.values():
        assert validate_objects(target_objs) == []
    objs = [o for target_objs in targets.values() for o in target_objs]

    services = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in _by_kind(objs, "Service")}
    hosts = {f"{name}.{ns}.svc.cluster.local" for ns, name in services}
    rules = {
        o["spec"]["host"]: {s["name"] for s in o["spec"]["subsets"]}
        for o in _by_kind(objs, "DestinationRule")
    }
    (vs,) = _by_kind(objs, "VirtualService")
    for model in policy.models:
        own = [r for r in vs["spec"]["http"] if r["name"].rpartition(".")[0] == model.name]
        canary = own[-1]
        assert canary["name"] == f"{model.name}.canary"
        expected = {v.name: v.weight for v in model.versions if v.weight}
        got = {r["destination"]["subset"]: r.get("weight", 100) for r in canary["route"]}
        assert got == expected  # canary weights equal the policy's
        for route in own:
            dests = [r["destination"] for r in route["route"]] + (
                [route["mirror"]] if "mirror" in route else []
            )
            for dest in dests:
                assert dest["host"] in hosts  # the backend exists
                assert dest["subset"] in rules[dest["host"]]  # the subset exists in its DestinationRule
            if model.shadow is not None:
                assert route["mirror"]["subset"] == model.shadow.version
                assert route["mirrorPercentage"]["value"] == model.shadow.percent

    for route in _by_kind(objs, "HTTPRoute") + _by_kind(objs, "GRPCRoute"):
        if route["metadata"]["name"] == "meshgate-no-route":
            continue
        ns = route["metadata"]["namespace"]
        for rule in route["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                assert (ns, ref["name"]) in services
        model = next(m for m in policy.models if model_name(m) == route["metadata"]["name"])
        weights = {r["name"]: r["weight"] for r in route["spec"]["rules"][-1]["backendRefs"]}
        assert sorted(weights.values()) == sorted(v.weight for v in model.versions if v.weight)

    ai_backends = {_key(o): o for o in _by_kind(objs, "AIServiceBackend")}
    backends = {_key(o): o for o in _by_kind(objs, "Backend")}
    for route in _by_kind(objs, "AIGatewayRoute"):
        ns = route["metadata"]["namespace"]
        for rule in route["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                backend_name = ai_backends[(ns, ref["name"])]["spec"]["backendRef"]["name"]
                for endpoint in backends[(ns, backend_name)]["spec"]["endpoints"]:
                    assert endpoint["fqdn"]["hostname"] in hosts
