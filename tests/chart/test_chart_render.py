"""The Helm chart: lint, golden renders, Kubernetes and prometheus-operator schemas, values schema, guards.

Rendered in-process with helm-python-sdk (no helm binary, no cluster). Regenerate the golden files
after an intended change, then review the diff:

    MESHGATE_UPDATE_GOLDEN=1 python -m pytest tests/chart
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.chart._chart import (
    CASES,
    CHART,
    GOLDEN,
    K8S_VERSIONS,
    case_values,
    crd_errors,
    find,
    golden_text,
    helm,
    is_crd_kind,
    k8s_errors,
    objects,
    render,
)
from tests.golden.plugin import update_requested

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, str]]:
    return {case: render(case_values(case)) for case in CASES}


# --- lint, golden files, schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(case: str) -> None:
    report = helm.lint(CHART, case_values(case), strict=True, namespace="meshgate", kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert problems == []


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, rendered: dict[str, dict[str, str]], request: pytest.FixtureRequest) -> None:
    path = GOLDEN / f"{case}.yaml"
    text = golden_text(rendered[case])
    if update_requested(request.config) or not path.exists():
        path.write_text(text)
        if not update_requested(request.config):
            pytest.fail(f"{path} did not exist: written; review it and run again")
        return
    assert text == path.read_text(), f"{path} differs; rerun with MESHGATE_UPDATE_GOLDEN=1 and review the diff"


@pytest.mark.parametrize("case", CASES)
def test_objects_validate_against_schemas(case: str, rendered: dict[str, dict[str, str]]) -> None:
    problems = []
    for obj in objects(rendered[case]):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if is_crd_kind(obj):
            problems += [f"{where}: {e}" for e in crd_errors(obj)]
        else:
            for version in K8S_VERSIONS:
                problems += [f"{where} ({version}): {e}" for e in k8s_errors(obj, version)]
    assert problems == []


def test_schema_validation_catches_a_misspelt_field() -> None:
    objs = objects(render())
    deployment = find(objs, "Deployment", "meshgate")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    assert any("readinesProbe" in e for e in k8s_errors(deployment, "v1.30.0"))
    rule = find(objects(render(case_values("istio"))), "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["expresion"] = "up"
    assert any("expresion" in e for e in crd_errors(rule))


def test_every_case_renders_the_kinds_it_enables(rendered: dict[str, dict[str, str]]) -> None:
    kinds = {case: sorted({o["kind"] for o in objects(out)}) for case, out in rendered.items()}
    base = ["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert kinds["default"] == base
    assert kinds["istio"] == sorted([*base, "PrometheusRule", "ServiceMonitor"])
    assert kinds["external-redis"] == base
    assert kinds["ha"] == sorted(
        ["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget", "Role",
         "RoleBinding", "Service", "ServiceAccount"]
    )


# --- the policy ----------------------------------------------------------------------------------------


def test_default_policy_passes_meshgate_validate(tmp_path: Path) -> None:
    configmap = find(objects(render()), "ConfigMap", "meshgate-policy")
    policy = tmp_path / "policy.yaml"
    policy.write_text(configmap["data"]["policy.yaml"])
    done = subprocess.run(
        [sys.executable, "-m", "meshgate", "validate", str(policy)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "ok (1 tenants, 1 models, 1 roles, 1 quotas)" in done.stdout


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("istio", "outbound|9002||meshgate.meshgate.svc.cluster.local"),  # ratelimit cluster of the EnvoyFilter
        ("envoy-gateway", "kind: ReferenceGrant"),
    ],
)
def test_render_output_reaches_the_charts_service(tmp_path: Path, target: str, expected: str) -> None:
    """The documented `meshgate render` step, run on the chart's default policy, points at this Service."""
    configmap = find(objects(render()), "ConfigMap", "meshgate-policy")
    policy = tmp_path / "policy.yaml"
    policy.write_text(configmap["data"]["policy.yaml"])
    run = [sys.executable, "-m", "meshgate", "render", "--policy", str(policy), "--target", target]
    done = subprocess.run(run, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
    if target == "istio":
        mesh = subprocess.run([*run, "--mesh-config"], capture_output=True, text=True, check=True).stdout
        provider = yaml.safe_load(mesh)["meshConfig"]["extensionProviders"][0]["envoyExtAuthzGrpc"]
        service = find(objects(render()), "Service", "meshgate")
        assert provider["service"] == "meshgate.meshgate.svc.cluster.local"
        assert provider["port"] == next(p["port"] for p in service["spec"]["ports"] if p["name"] == "extauthz")


def test_policy_is_mounted_as_a_directory_so_updates_reach_the_pod() -> None:
    objs = objects(render())
    pod = find(objs, "Deployment", "meshgate")["spec"]["template"]
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    policy_mount = next(m for m in mounts if m["name"] == "policy")
    assert "subPath" not in policy_mount
    assert policy_mount["mountPath"] == "/etc/meshgate/policy"
    assert "--policy=/etc/meshgate/policy/policy.yaml" in pod["spec"]["containers"][0]["args"]
    # no checksum annotation: a policy change must not restart the pods
    assert not any("checksum" in k for k in pod["metadata"].get("annotations", {}))


def test_existing_configmap_is_used_and_none_is_created() -> None:
    objs = objects(render({"policy": {"existingConfigMap": "team-policy", "key": "p.yaml"}}))
    assert [o for o in objs if o["kind"] == "ConfigMap"] == []
    pod = find(objs, "Deployment", "meshgate")["spec"]["template"]["spec"]
    assert pod["volumes"][0]["configMap"]["name"] == "team-policy"
    assert "--policy=/etc/meshgate/policy/p.yaml" in pod["containers"][0]["args"]


# --- the pod ---------------------------------------------------------------------------------------------


def test_pod_is_hardened_and_probed_over_grpc_health() -> None:
    pod = find(objects(render()), "Deployment", "meshgate")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["readinessProbe"]["grpc"] == {"port": 9001, "service": ""}
    assert container["startupProbe"]["grpc"] == {"port": 9001, "service": ""}
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone", "kubernetes.io/hostname"
    }
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "meshgate"
    env = {e["name"]: e for e in container["env"]}
    assert env["MESHGATE_REDIS_URL"]["value"] == "redis://meshgate-redis:6379/0"


def test_service_ports_speak_grpc() -> None:
    service = find(objects(render()), "Service", "meshgate")
    ports = {p["name"]: (p["port"], p.get("appProtocol")) for p in service["spec"]["ports"]}
    assert ports == {
        "extauthz": (9001, "grpc"), "ratelimit": (9002, "grpc"), "xds": (18000, "grpc"), "metrics": (9090, "http"),
        "extauthz-http": (9003, "http"),
    }


def test_external_redis_url_comes_from_the_secret() -> None:
    objs = objects(render(case_values("external-redis")))
    env = find(objs, "Deployment", "meshgate")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [
        {"name": "MESHGATE_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "meshgate-redis", "key": "redis-url"}}}
    ]
    assert not [o for o in objs if "redis" in o["metadata"]["name"] and o["kind"] == "Deployment"]


def test_ha_uses_the_hpa_and_pins_the_image_by_digest() -> None:
    objs = objects(render(case_values("ha")))
    deployment = find(objs, "Deployment", "meshgate")
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@sha256:" + "0" * 64)
    assert find(objs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3
    assert find(objs, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1, "selector": deployment["spec"]["selector"]
    }
    role = find(objs, "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["meshgate-policy"], "verbs": ["get", "watch"]}
    ]


# --- network policy ---------------------------------------------------------------------------------------


def _grpc_sources(objs: list[dict]) -> list[dict]:
    policy = find(objs, "NetworkPolicy", "meshgate")
    rule = next(r for r in policy["spec"]["ingress"] if {"port": "extauthz", "protocol": "TCP"} in r["ports"])
    return rule["from"]


def _ns(name: str) -> dict:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def test_only_the_gateway_namespace_reaches_the_grpc_ports(rendered: dict[str, dict[str, str]]) -> None:
    assert _grpc_sources(objects(rendered["istio"])) == [_ns("istio-system")]
    assert _grpc_sources(objects(rendered["envoy-gateway"])) == [_ns("envoy-gateway-system")]
    # an internal NLB in front: the VPC CIDR as well
    assert _grpc_sources(objects(rendered["external-redis"])) == [
        _ns("envoy-gateway-system"), {"ipBlock": {"cidr": "10.0.0.0/16"}}
    ]
    # no gateway known: pods of the release namespace only
    assert _grpc_sources(objects(rendered["default"])) == [{"podSelector": {}}]
    redis_policy = find(objects(rendered["default"]), "NetworkPolicy", "meshgate-redis")
    assert redis_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"][
        "app.kubernetes.io/component"
    ] == "control-plane"


def test_istio_labels_pods_for_injection(rendered: dict[str, dict[str, str]]) -> None:
    labels = find(objects(rendered["istio"]), "Deployment", "meshgate")["spec"]["template"]["metadata"]["labels"]
    assert labels["sidecar.istio.io/inject"] == "true"
    default = find(objects(rendered["default"]), "Deployment", "meshgate")["spec"]["template"]["metadata"]
    assert "sidecar.istio.io/inject" not in default["labels"]


# --- values.schema.json and template guards ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"redis": {"mode": "cluster"}}, "at '/redis/mode': value must be one of 'memory', 'inChart', 'external'"),
        ({"ports": {"extauthz": 70000}}, "at '/ports/extauthz': maximum: got 70,000, want 65,535"),
        ({"metrics": {"serviceMonitor": {"interval": "soon"}}}, "at '/metrics/serviceMonitor/interval': 'soon'"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
    ],
)
def test_values_schema_refuses_bad_values(values: dict, message: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as caught:
        chart.validate_schema(chart.merge_values(values))
    assert message in str(caught.value), str(caught.value)
    with pytest.raises(helm.HelmError):
        render(values)


def test_values_schema_message_is_clear() -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as caught:
        chart.validate_schema(chart.merge_values({"redis": {"mode": "cluster"}}))
    # the message names the key as a JSON pointer and lists the allowed values
    assert str(caught.value) == "meshgate:\n- at '/redis/mode': value must be one of 'memory', 'inChart', 'external'\n"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis": {"mode": "memory"}}, "redis.mode=memory keeps rate-limit counters per pod"),
        ({"redis": {"mode": "external"}}, "redis.mode=external needs redis.external.url"),
        ({"istio": {"enabled": True}, "fullnameOverride": "mg"}, 'policy.inline.mesh.service is "meshgate"'),
        ({"envoyGateway": {"enabled": True}, "ports": {"extauthz": 9101}}, "policy.inline.mesh.extauthz_port"),
    ],
)
def test_template_guards_explain_what_to_change(values: dict, message: str) -> None:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    assert message in str(caught.value), str(caught.value)


def test_memory_mode_is_fine_with_one_replica() -> None:
    objs = objects(render({"redis": {"mode": "memory"}, "replicaCount": 1}))
    container = find(objs, "Deployment", "meshgate")["spec"]["template"]["spec"]["containers"][0]
    assert "env" not in container
    assert [o for o in objs if o["kind"] == "PodDisruptionBudget" or "redis" in o["metadata"]["name"]] == []
    problems = [e for o in objs for e in k8s_errors(o, "v1.30.0")]
    assert problems == []


def test_notes_name_the_render_step_for_each_integration(rendered: dict[str, dict[str, str]]) -> None:
    notes = {case: out["meshgate/templates/NOTES.txt"] for case, out in rendered.items()}
    assert "meshgate render --policy policy.yaml --target istio --mesh-config" in notes["istio"]
    assert "meshgate render --policy policy.yaml --target envoy-gateway" in notes["envoy-gateway"]
    assert "only pods in meshgate can call the gRPC ports" in notes["default"]


def test_values_yaml_documents_every_key() -> None:
    """Every top-level key and every key of the first level below it has a comment above it (its own, or
    its section's header): values.yaml is the chart's reference."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if line.startswith("#") or not line.strip() or line.startswith(("    ", "  -", "- ")):
            continue
        if not line.split(":")[0].strip().replace("_", "").isalnum():
            continue
        above = [p.strip() for p in lines[max(0, i - 12):i] if p.strip()]
        parent_documented = line.startswith("  ") and any(p.startswith("#") for p in above)
        if not (above and above[-1].startswith("#")) and not parent_documented:
            undocumented.append(line.strip())
    assert undocumented == []


@pytest.mark.parametrize("case", CASES)
def test_container_args_parse_with_the_real_cli(case: str, rendered: dict[str, dict[str, str]]) -> None:
    from meshgate.cli import _parser

    container = find(objects(rendered[case]), "Deployment", "meshgate")["spec"]["template"]["spec"]["containers"][0]
    args = _parser().parse_args(container["args"])
    assert args.command == "serve"
    assert args.policy.startswith("/etc/meshgate/policy/")
    assert (args.extauthz, args.ratelimit, args.xds, args.metrics) == (
        "0.0.0.0:9001", "0.0.0.0:9002", "0.0.0.0:18000", "0.0.0.0:9090"
    )
    assert args.log_level == "info"
    assert args.drain_delay + args.grace < find(objects(rendered[case]), "Deployment", "meshgate")["spec"][
        "template"
    ]["spec"]["terminationGracePeriodSeconds"]
