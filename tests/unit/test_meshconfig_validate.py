"""Strict schema validation: every golden object against the real CRDs, and proof that it bites."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from meshgate.cli import main
from meshgate.meshconfig import SchemaSet, validate_objects
from meshgate.meshconfig._trim_schemas import dump, trim
from meshgate.meshconfig.validate import PACKAGED_SCHEMAS, strict_schema

ROOT = Path(__file__).parents[2]
SCHEMAS = ROOT / "tests" / "schemas"
GOLDEN = ROOT / "tests" / "golden" / "meshconfig"


@pytest.fixture(scope="module")
def schemas() -> SchemaSet:
    return SchemaSet.from_dir(SCHEMAS)


def _golden_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(GOLDEN.rglob("*.yaml")):
        if path.name.endswith(".values.yaml"):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out.append((f"{path.relative_to(GOLDEN)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def test_golden_files_exist() -> None:
    kinds = {doc["kind"] for _, doc in _golden_objects()}
    assert {
        "VirtualService",
        "DestinationRule",
        "EnvoyFilter",
        "AuthorizationPolicy",
        "PeerAuthentication",
        "RequestAuthentication",
        "HTTPRoute",
        "GRPCRoute",
        "AIGatewayRoute",
        "AIServiceBackend",
        "Backend",
        "SecurityPolicy",
        "BackendTrafficPolicy",
        "ReferenceGrant",
        "InferenceService",
        "Service",
    } <= kinds


def test_every_golden_object_validates_strictly(schemas: SchemaSet) -> None:
    objects = _golden_objects()
    assert len(objects) > 50
    problems = [(label, str(p)) for label, doc in objects for p in schemas.validate(doc)]
    assert problems == []


def _golden(kind: str, name: str) -> dict[str, Any]:
    return copy.deepcopy(
        next(d for _, d in _golden_objects() if d["kind"] == kind and d["metadata"]["name"] == name)
    )


def test_misspelt_fields_are_caught(schemas: SchemaSet) -> None:
    vs = _golden("VirtualService", "meshgate")
    route = vs["spec"]["http"][1]  # resnet.canary
    route["retries"]["perTryTimout"] = route["retries"].pop("perTryTimeout")
    isvc = _golden("InferenceService", "resnet50-v1")
    isvc["spec"]["predictor"]["minReplica"] = isvc["spec"]["predictor"].pop("minReplicas")
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    svc = _golden("Service", "resnet")
    svc["spec"]["ports"][0]["targetPrt"] = 8080
    svc["metadata"]["lables"] = {}
    messages = sorted(str(p) for p in validate_objects([vs, isvc, svc], schemas))
    assert messages == [
        "InferenceService vision/resnet50-v1: spec.predictor.minReplica: unknown field",
        "InferenceService vision/resnet50-v1: spec.predictor.model.storageURI: unknown field",
        "Service default/resnet: metadata.lables: unknown field",
        "Service default/resnet: spec.ports[0].targetPrt: unknown field",
        "VirtualService istio-system/meshgate: spec.http[1].retries.perTryTimout: unknown field",
    ]


def test_wrong_types_enums_and_required_fields_are_caught(schemas: SchemaSet) -> None:
    dr = _golden("DestinationRule", "resnet")
    dr["spec"]["trafficPolicy"]["tls"]["mode"] = "MUTUAL_ISTIO"
    del dr["spec"]["host"]
    btp = _golden("BackendTrafficPolicy", "meshgate-rate-limit")
    btp["spec"]["rateLimit"]["global"]["rules"][0]["limit"]["requests"] = "ten"
    messages = [str(p) for p in validate_objects([dr, btp], schemas)]
    assert any("spec.trafficPolicy.tls.mode" in m and "MUTUAL_ISTIO" in m for m in messages)
    assert any("'host' is a required property" in m for m in messages)
    assert any("limit.requests" in m and "'ten'" in m for m in messages)


def test_unknown_kind_and_bad_metadata_are_refused(schemas: SchemaSet) -> None:
    obj = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualSrvice", "metadata": {"name": "x"}}
    assert [p.field for p in schemas.validate(obj)] == ["apiVersion"]
    vs = _golden("VirtualService", "meshgate")
    vs["metadata"]["name"] = "Not_A_Name"
    vs["metadata"]["labels"]["meshgate.io/model"] = "x" * 64
    fields = sorted(p.field for p in schemas.validate(vs))
    assert fields == ["metadata.labels.meshgate.io/model", "metadata.name"]


def test_strict_schema_recipe() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "nullable": True},
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"k": {}}},
            "one": {"type": "object", "properties": {"x": {}}, "oneOf": [{"properties": {"x": {}}}]},
        },
    }
    strict = strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert {"apiVersion", "kind", "metadata"} <= set(strict["properties"])
    assert strict["properties"]["a"]["type"] == ["string", "null"]
    assert "additionalProperties" not in strict["properties"]["open"]
    assert strict["properties"]["one"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["one"]["oneOf"][0]


def test_packaged_schemas_are_the_trim_of_the_vendored_ones() -> None:
    packaged = (PACKAGED_SCHEMAS / "crds.json.gz").read_bytes()
    assert packaged == dump(trim(SCHEMAS)), (
        "regenerate: python -m meshgate.meshconfig._trim_schemas tests/schemas meshgate/meshconfig/schemas/crds.json.gz"
    )


def test_render_refuses_an_invalid_object_and_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    render_module = importlib.import_module("meshgate.meshconfig.render")

    real = render_module._RENDERERS["kserve"]

    def broken(policy: Any) -> list[dict[str, Any]]:
        objs = real(policy)
        objs[0]["spec"]["selectr"] = objs[0]["spec"].pop("selector")
        return objs

    monkeypatch.setitem(render_module._RENDERERS, "kserve", broken)
    out = tmp_path / "out"
    code = main(
        ["render", "--policy", str(ROOT / "examples" / "policy.yaml"), "--target", "kserve", "-o", str(out)]
    )
    assert code == 1
    assert not out.exists()
    assert "refused: Service default/resnet: spec.selectr: unknown field" in capsys.readouterr().err


@pytest.mark.parametrize("version", ["v1.30.0", "v1.35.0"])
def test_core_objects_also_pass_kubernetes_strict_json_schemas(version: str) -> None:
    """Cross-check of the client-model validator: the rendered Services against the strict JSON schemas
    of the Kubernetes API that the chart tests vendor (tests/schemas/kubernetes/README.md)."""
    folder = SCHEMAS / "kubernetes" / f"{version}-strict"
    resource = Resource.from_contents(json.loads((folder / "_definitions.json").read_text()))
    registry: Registry[Any] = Registry().with_resources(
        [("https://kubernetes.io/api/_definitions.json", resource), ("/api/_definitions.json", resource)]
    )
    validator = Draft202012Validator(json.loads((folder / "service-v1.json").read_text()), registry=registry)
    services = [doc for _, doc in _golden_objects() if doc["kind"] == "Service"]
    assert services
    assert [e.message for s in services for e in validator.iter_errors(s)] == []
    broken = copy.deepcopy(services[0])
    broken["spec"]["ports"][0]["targetPrt"] = 1
    assert list(validator.iter_errors(broken))
