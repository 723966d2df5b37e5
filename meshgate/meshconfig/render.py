"""Render a policy for a target, order the objects, check them, and write them as YAML."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from ..policy.model import Policy
from ._common import Obj
from .envoy_gateway import render_envoy_gateway
from .istio import mesh_config, render_istio
from .kserve import render_kserve
from .validate import Problem, SchemaSet

__all__ = [
    "TARGETS",
    "Target",
    "dump_yaml",
    "file_name",
    "mesh_config_yaml",
    "render",
    "render_files",
    "validate_objects",
    "write_dir",
]

Target = Literal["istio", "envoy-gateway", "kserve", "all"]
TARGETS: tuple[Target, ...] = ("istio", "envoy-gateway", "kserve", "all")

_RENDERERS: dict[str, Callable[[Policy], list[Obj]]] = {
    "kserve": render_kserve,
    "istio": render_istio,
    "envoy-gateway": render_envoy_gateway,
}
# apply order: backends first, then traffic, then the policies that refer to them
_KIND_ORDER = (
    "Service",
    "InferenceService",
    "Gateway",
    "Backend",
    "AIServiceBackend",
    "DestinationRule",
    "VirtualService",
    "HTTPRoute",
    "GRPCRoute",
    "AIGatewayRoute",
    "ReferenceGrant",
    "PeerAuthentication",
    "RequestAuthentication",
    "AuthorizationPolicy",
    "SecurityPolicy",
    "BackendTrafficPolicy",
    "EnvoyFilter",
)


def _sort_key(obj: Obj) -> tuple[int, str, str, str, str]:
    kind = obj["kind"]
    rank = _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)
    meta = obj["metadata"]
    return rank, obj["apiVersion"], meta.get("namespace", ""), meta["name"], kind


def render(policy: Policy, target: Target) -> list[Obj]:
    """Every object for `target`, in a stable apply order. Pure: same policy, same list."""
    names = list(_RENDERERS) if target == "all" else [target]
    objs = [obj for name in names for obj in _RENDERERS[name](policy)]
    return sorted(objs, key=_sort_key)


def validate_objects(objs: Iterable[Mapping[str, Any]], schemas: SchemaSet | None = None) -> list[Problem]:
    """Strict validation of every object (packaged CRD schemas unless `schemas` is given)."""
    schemas = schemas if schemas is not None else SchemaSet.packaged()
    return [problem for obj in objs for problem in schemas.validate(obj)]


class _Dumper(yaml.SafeDumper):
    """Block style; long strings are not folded; no anchors for repeated values."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(objs: Iterable[Mapping[str, Any]]) -> str:
    return "".join(
        "---\n"
        + yaml.dump(dict(obj), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1 << 16)
        for obj in objs
    )


def file_name(obj: Mapping[str, Any]) -> str:
    """One file per kind: virtualservice.networking.istio.io.yaml, service.core.yaml."""
    group = str(obj["apiVersion"]).rpartition("/")[0] or "core"
    return f"{str(obj['kind']).lower()}.{group}.yaml"


def render_files(objs: list[Obj]) -> dict[str, str]:
    """File name -> YAML text, one file per kind: the folder can go to `kubectl apply -f` as it is.
    (The istiod meshConfig fragment is not a Kubernetes object: `meshgate render --mesh-config`.)"""
    by_file: dict[str, list[Obj]] = {}
    for obj in objs:
        by_file.setdefault(file_name(obj), []).append(obj)
    return {name: dump_yaml(items) for name, items in sorted(by_file.items())}


def mesh_config_yaml(policy: Policy) -> str:
    header = (
        "# Registers meshgate as the ext_authz provider. Merge into the istiod Helm values\n"
        "# (helm upgrade istiod istio/istiod -n istio-system --reuse-values -f THIS_FILE)\n"
        "# or into IstioOperator spec.meshConfig / istioctl install -f.\n"
    )
    return header + yaml.dump(mesh_config(policy), Dumper=_Dumper, sort_keys=False, width=1 << 16)


def write_dir(files: Mapping[str, str], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
