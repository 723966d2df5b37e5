"""The policy fields meshgate render reads: defaults keep old policies valid; bad values name the field."""

from __future__ import annotations

import re
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
