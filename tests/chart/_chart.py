"""Render the chart with helm-python-sdk (Helm's Go library, no helm binary) and validate the objects.

Kubernetes kinds are checked against the strict JSON schemas in tests/schemas/kubernetes, the
prometheus-operator kinds against the CRDs in tests/schemas/prometheus-operator (closed objects, see
that README).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import promql_parser
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

# the test extra installs it on Linux only (the platforms with published wheels)
helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra, Linux wheels) is not installed")

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "meshgate"
GOLDEN = REPO / "tests" / "golden" / "chart"
SCHEMAS = REPO / "tests" / "schemas"
K8S_VERSIONS = ("v1.30.0", "v1.35.0")
RELEASE = "meshgate"
NAMESPACE = "meshgate"

# case name -> values file under charts/meshgate/ci (None: the chart's defaults)
CASES: dict[str, str | None] = {
    "default": None,
    "istio": "istio-values.yaml",
    "envoy-gateway": "envoy-gateway-values.yaml",
    "external-redis": "external-redis-values.yaml",
    "ha": "ha-values.yaml",
}

Obj = dict[str, Any]


def case_values(case: str) -> Obj:
    name = CASES[case]
    return {} if name is None else yaml.safe_load((CHART / "ci" / name).read_text())


def render(values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template meshgate charts/meshgate -n meshgate`."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(dict(values or {}), name=RELEASE, namespace=namespace, is_install=True)


def objects(rendered: Mapping[str, str]) -> list[Obj]:
    """Every Kubernetes object in the rendered templates (NOTES.txt excluded), in template order."""
    out: list[Obj] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        out += [doc for doc in yaml.safe_load_all(rendered[path]) if doc]
    return out


class _GoldenDumper(yaml.SafeDumper):
    """Multi-line strings (policy, PromQL, dashboard JSON) as literal blocks, so diffs read line by line."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_GoldenDumper.add_representer(str, _str)


def golden_text(rendered: Mapping[str, str]) -> str:
    """A stable multi-document YAML of the objects, each headed by its template path."""
    parts = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                parts.append(f"# Source: {path}\n" + yaml.dump(doc, Dumper=_GoldenDumper, sort_keys=True, width=110))
    return "---\n".join(parts)


def find(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


# --- Kubernetes built-in kinds -----------------------------------------------------------------------


def _k8s_file(obj: Mapping[str, Any]) -> str:
    group_version = str(obj["apiVersion"])
    group, _, version = group_version.rpartition("/")
    group = group.split(".")[0]
    return f"{obj['kind'].lower()}-{group + '-' if group else ''}{version}.json"


@cache
def _k8s_registry(version: str) -> Registry:
    defs = json.loads((SCHEMAS / "kubernetes" / f"{version}-strict" / "_definitions.json").read_text())
    resource = Resource.from_contents(defs, default_specification=DRAFT202012)
    return Registry().with_resources(
        [("https://kubernetes.io/api/_definitions.json", resource), ("/api/_definitions.json", resource)]
    )


def k8s_errors(obj: Mapping[str, Any], version: str) -> list[str]:
    path = SCHEMAS / "kubernetes" / f"{version}-strict" / _k8s_file(obj)
    if not path.exists():
        return [f"no Kubernetes schema {path.name} for {obj['apiVersion']} {obj['kind']}"]
    schema = json.loads(path.read_text())
    validator = jsonschema.Draft202012Validator(schema, registry=_k8s_registry(version))
    return [_message(e) for e in validator.iter_errors(obj)]


def _message(error: jsonschema.ValidationError) -> str:
    return f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"


# --- CRDs (prometheus-operator) -------------------------------------------------------------------------


def _close(node: Any, *, root: bool) -> Any:
    """OpenAPI v3 -> JSON schema draft 4: nullable as a "null" type, declared objects closed."""
    if isinstance(node, list):
        return [_close(n, root=False) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("allOf", "anyOf", "oneOf", "not"):
            out[key] = value  # branches stay as shipped: closing them would reject valid combinations
        elif key == "properties":
            out[key] = {k: _close(v, root=False) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _close(value, root=False)
        elif key == "pattern" and isinstance(value, str) and value.startswith("^(?i)"):
            out[key] = "(?i)^" + value[len("^(?i)"):]  # RE2 accepts a flag group after ^, Python re does not
        else:
            out[key] = value
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    open_ = out.get("x-kubernetes-preserve-unknown-fields") is True or "additionalProperties" in out
    if "properties" in out and not open_ and not root:
        out["additionalProperties"] = False
    return out


@cache
def _crd_schemas() -> dict[tuple[str, str], Obj]:
    found: dict[tuple[str, str], Obj] = {}
    for path in sorted((SCHEMAS / "prometheus-operator").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    api = f"{spec['group']}/{version['name']}"
                    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                    found[(api, spec["names"]["kind"])] = _close(schema, root=True)
    return found


def crd_errors(obj: Mapping[str, Any]) -> list[str]:
    schema = _crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        return [f"no CRD schema for {obj['apiVersion']} {obj['kind']}"]
    return [_message(e) for e in jsonschema.Draft4Validator(schema).iter_errors(obj)]


def is_crd_kind(obj: Mapping[str, Any]) -> bool:
    return str(obj["apiVersion"]).startswith("monitoring.coreos.com/")


# --- PromQL ------------------------------------------------------------------------------------------

# Grafana's interval variables, replaced by a duration before parsing (other variables sit in strings)
_GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")


def promql_metrics(expr: str) -> set[str]:
    """Metric names an expression reads, from the parsed AST; a syntax error raises ValueError."""
    tree = promql_parser.parse(_GRAFANA_INTERVALS.sub("5m", expr))
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(tree, pre_visit=visit)
    return names


def iter_dashboard_exprs(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows included."""
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner["title"], target["expr"]
