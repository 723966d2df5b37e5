"""The policy fields meshgate render reads: defaults keep old policies valid; bad values name the field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from meshgate.meshconfig import render_all, validate_objects
from meshgate.meshconfig._common import gateway_api_duration, k8s_name, proto_duration
from meshgate.policy import PolicyError, parse_policy

_MODEL = """
models:
  - name: m
    namespace: {namespace}
    versions:
      - {{name: v1, endpoints: ["h:1"], {version}}}
"""


def _errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    return [str(issue) for issue in info.value.issues]


def test_defaults() -> None:
    policy = parse_policy(_MODEL.format(namespace="vision", version="storage_uri: s3://b/m"))
    version = policy.models[0].versions[0]
    assert (version.min_replicas, version.max_replicas, version.gpus, version.runtime) == (1, None, 0, None)
    assert version.deployment_mode == "Standard"
    assert policy.models[0].namespace == "vision"
    assert policy.mesh.namespace == "meshgate" and policy.mesh.extauthz_port == 9001
    assert policy.mesh.istio.gateway_selector == {"istio": "ingressgateway"}
    assert policy.mesh.envoy_gateway.gateway_class == "eg"
    assert policy.models[0].outlier_detection is not None
    assert policy.models[0].outlier_detection.consecutive_5xx_errors == 5


def test_scale_to_zero_needs_serverless() -> None:
    errors = _errors(_MODEL.format(namespace="vision", version="min_replicas: 0"))
    assert (
        len(errors) == 1
        and "needs deployment_mode: Knative" in errors[0]
        and "models[0].versions[0]" in errors[0]
    )
    parse_policy(_MODEL.format(namespace="vision", version="min_replicas: 0, deployment_mode: Knative"))


def test_replica_bounds_and_gpus() -> None:
    errors = _errors(_MODEL.format(namespace="vision", version="min_replicas: 3, max_replicas: 2"))
    assert "max_replicas 2 is below min_replicas 3" in errors[0]
    errors = _errors(_MODEL.format(namespace="vision", version="gpus: -1"))
    assert "gpus" in errors[0]


def test_namespaces_must_be_dns_labels() -> None:
    errors = _errors(_MODEL.format(namespace="Vision_NS", version="gpus: 1"))
    assert len(errors) == 1 and "models[0].namespace" in errors[0]
    errors = _errors("mesh: {istio: {gateway_namespace: a.b}}")
    assert "mesh.istio.gateway_namespace" in errors[0]
    errors = _errors("mesh: {istio: {gatway_namespace: x}}")
    assert "unknown key 'gatway_namespace'" in errors[0]


def test_k8s_names_are_stable_and_distinct() -> None:
    assert k8s_name("resnet") == "resnet"
    assert k8s_name("bert.base_uncased") == k8s_name("bert.base_uncased")
    assert k8s_name("bert.base_uncased") != k8s_name("bert-base.uncased")
    long = k8s_name("x" * 100, "v1")
    assert len(long) == 63 and long.startswith("x")


def test_k8s_names_start_with_a_letter_and_inference_services_leave_room_for_kserves() -> None:
    """A Service's name is a DNS-1035 label (a letter first); an InferenceService's at most 45, so that
    KServe's `<name>-predictor-00001` fits 63."""
    assert re.match(r"^m-3d-unet-[0-9a-f]{6}$", k8s_name("3d-unet"))
    policy = parse_policy(_MODEL.format(namespace="vision", version="storage_uri: s3://b/m").replace(
        "name: m\n", "name: " + "M" * 128 + "\n"))  # fmt: skip
    isvc = next(o for o in render_all(policy)["kserve"] if o["kind"] == "InferenceService")
    assert len(isvc["metadata"]["name"]) == 45 and isvc["metadata"]["name"][0].isalpha()


def _clash(models: str) -> str:
    policy = parse_policy(f"models:\n{models}", "p.yaml")
    with pytest.raises(ValueError) as caught:
        render_all(policy)
    return str(caught.value)


def test_two_objects_of_one_name_are_refused() -> None:
    """Names joined from the policy can meet: model `a` version `b` and model `a-b` both make a Service
    `a-b`; a model named like another's hashed name takes its objects. The one applied last would win."""
    joined = _clash(
        '  - {name: a, versions: [{name: b, endpoints: ["h:1"], storage_uri: "s3://x/a"}]}\n'
        '  - {name: a-b, versions: [{name: c, endpoints: ["h:2"], storage_uri: "s3://x/b"}]}\n'
    )
    assert (
        "two Service objects named 'a-b' (namespace default), of model a, version b and of model a-b"
        in joined
    )
    hashed = k8s_name("Resnet")
    taken = _clash(
        '  - {name: Resnet, versions: [{name: v1, endpoints: ["h:1"]}]}\n'
        f'  - {{name: {hashed}, versions: [{{name: v1, endpoints: ["h:2"]}}]}}\n'
    )
    assert f"named {hashed!r}" in taken


def test_render_says_which_names_meet_and_writes_nothing(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "models:\n"
        '  - {name: a, versions: [{name: b, endpoints: ["h:1"], storage_uri: "s3://x/a"}]}\n'
        '  - {name: a-b, versions: [{name: c, endpoints: ["h:2"], storage_uri: "s3://x/b"}]}\n'
    )
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "meshgate",
        "render",
        "--policy",
        str(policy),
        "--target",
        "all",
        "-o",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "two Service objects named 'a-b'" in done.stderr and done.stderr.rstrip().endswith(
        "nothing written"
    )
    assert not out.exists()


def test_istio_subsets_are_dns_labels() -> None:
    """Istio refuses a subset named `v1_0` or `v1.1` (not a DNS-1123 label): the rendered subset is the
    version's k8s name, and the VirtualService routes to that same subset."""
    policy = parse_policy(
        "models:\n  - name: m\n    versions:\n"
        '      - {name: v1_0, weight: 50, endpoints: ["h:1"]}\n      - {name: v1.1, weight: 50, endpoints: ["h:2"]}\n'
    )
    objs = render_all(policy)["istio"]
    [rule] = [o for o in objs if o["kind"] == "DestinationRule"]
    subsets = [s["name"] for s in rule["spec"]["subsets"]]
    assert all(re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", name) for name in subsets)
    assert [s["labels"]["meshgate.io/version"] for s in rule["spec"]["subsets"]] == ["v1_0", "v1.1"]
    [service] = [o for o in objs if o["kind"] == "VirtualService"]
    routed = {d["destination"]["subset"] for r in service["spec"]["http"] for d in r.get("route", [])}
    assert routed == set(subsets)


def test_kserve_references_are_names_kserve_takes() -> None:
    errors = _errors(
        _MODEL.format(namespace="vision", version="kserve: {service: svc_1, namespace: my_ns.prod}")
    )
    assert any(
        "kserve.service: invalid value 'svc_1': expected an InferenceService name" in e for e in errors
    )
    assert any(
        "kserve.namespace: invalid value 'my_ns.prod': expected a Kubernetes name" in e for e in errors
    )


def test_durations() -> None:
    assert proto_duration(30.0) == "30s" and proto_duration(0.25) == "0.25s"
    assert gateway_api_duration(30.0) == "30s" and gateway_api_duration(0.25) == "250ms"


def test_the_policies_in_the_docs_render_and_validate() -> None:
    text = (Path(__file__).parents[2] / "docs" / "meshconfig.md").read_text()
    policies = re.findall(r"cat > policy\.yaml <<'EOF'\n(.*?)\nEOF\n", text, flags=re.S)
    assert len(policies) == 2
    for doc in policies:
        policy = parse_policy(doc, "docs/meshconfig.md")
        objs = [obj for objs in render_all(policy).values() for obj in objs]
        assert validate_objects(objs) == []
        names = {(o["kind"], o["metadata"]["name"]) for o in objs}
        model = policy.models[0]
        assert ("InferenceService", f"{model.name}-v1") in names  # the name the docs wait for


def test_an_unreadable_existing_mesh_config_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "mesh.yaml"
    broken.write_text("a: [1\n")
    policy = Path(__file__).parents[2] / "examples" / "policy.yaml"
    for given in (broken, tmp_path / "missing.yaml"):
        command = [sys.executable, "-m", "meshgate", "render", "--policy", str(policy), "--mesh-config",
                   "--existing-mesh-config", str(given)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.startswith("meshgate render: --existing-mesh-config: ")
