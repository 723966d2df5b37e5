"""Render a policy for a target, order the objects, check them, and write them as YAML."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from ..policy.model import Policy
from ._common import LABEL_MODEL, LABEL_VERSION, Obj
from .envoy_gateway import render_envoy_gateway
from .istio import mesh_config, render_istio
from .kserve import render_kserve
from .validate import Problem, SchemaSet

__all__ = [
    "SINGLE_TARGETS",
    "TARGETS",
    "NameClash",
    "Target",
    "dump_yaml",
    "file_name",
    "mesh_config_yaml",
    "render",
    "render_all",
    "render_files",
    "validate_objects",
    "write_dir",
]

Target = Literal["istio", "envoy-gateway", "kserve", "all"]
TARGETS: tuple[Target, ...] = ("istio", "envoy-gateway", "kserve", "all")
SINGLE_TARGETS: tuple[Target, ...] = ("kserve", "istio", "envoy-gateway")

_RENDERERS: dict[str, Callable[[Policy], list[Obj]]] = {
    "kserve": render_kserve,
    "istio": render_istio,
    "envoy-gateway": render_envoy_gateway,
}
# apply order: backends first, then traffic, then the policies that refer to them
_KIND_ORDER = (
    "Namespace",
    "ResourceQuota",
    "NetworkPolicy",
    "Service",
    "InferenceService",
    "Gateway",
    "Backend",
    "AIServiceBackend",
    "DestinationRule",
    "VirtualService",
    "HTTPRouteFilter",
    "HTTPRoute",
    "GRPCRoute",
    "AIGatewayRoute",
    "ReferenceGrant",
    "PeerAuthentication",
    "RequestAuthentication",
    "AuthorizationPolicy",
    "SecurityPolicy",
    "ClientTrafficPolicy",
    "BackendTrafficPolicy",
    "EnvoyFilter",
)


def _sort_key(obj: Obj) -> tuple[int, str, str, str, str]:
    kind = obj["kind"]
    rank = _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)
    meta = obj["metadata"]
    return rank, obj["apiVersion"], meta.get("namespace", ""), meta["name"], kind


class NameClash(ValueError):
    """Two objects of one kind, namespace and name: names joined from the policy's met (model `a`
    version `b` and model `a-b` both make `a-b`), and the one applied last would replace the other."""


def render(policy: Policy, target: Target) -> list[Obj]:
    """Every object for `target` (one of SINGLE_TARGETS), in a stable apply order. Pure: same policy,
    same list. Istio and Envoy Gateway objects are never mixed: `render_all` keeps them apart. Raises
    NameClash (or kserve's ServiceNameClash) rather than render two objects of one name."""
    if target not in _RENDERERS:
        raise ValueError(f"render one target at a time ({', '.join(SINGLE_TARGETS)}); for all: render_all")
    objs = sorted(_RENDERERS[target](policy), key=_sort_key)
    _refuse_duplicates(objs)
    return objs


def _refuse_duplicates(objs: list[Obj]) -> None:
    seen: dict[tuple[str, str, str, str], Obj] = {}
    for obj in objs:
        meta = obj["metadata"]
        key = (obj["apiVersion"].rpartition("/")[0], obj["kind"], meta.get("namespace", ""), meta["name"])
        first = seen.setdefault(key, obj)
        if first is not obj:
            raise NameClash(
                f"two {key[1]} objects named {key[3]!r} (namespace {key[2] or '-'}), of {_of(first)} and "
                f"of {_of(obj)}: names joined from the policy's meet (model `a` version `b` and model "
                "`a-b` both make `a-b`); rename a model or a version"
            )


def _of(obj: Obj) -> str:
    labels = obj["metadata"].get("labels", {})
    found = ", ".join(
        f"{k.rpartition('/')[2]} {v}" for k, v in labels.items() if k in (LABEL_MODEL, LABEL_VERSION)
    )
    return found or "the policy"


def render_all(policy: Policy) -> dict[str, list[Obj]]:
    """Target -> its objects, for every target (each applied on its own: one directory per target)."""
    return {target: render(policy, target) for target in SINGLE_TARGETS}


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


def mesh_config_yaml(policy: Policy, existing: Mapping[str, Any] | None = None) -> str:
    """The istiod Helm values registering meshgate; `existing` (the cluster's mesh config) keeps its
    other extension providers: Helm replaces a list on upgrade, it does not merge it."""
    header = (
        "# Registers meshgate as the ext_authz provider. Merge into the istiod Helm values\n"
        "# (helm upgrade istiod istio/istiod -n istio-system --reuse-values -f THIS_FILE)\n"
        "# or into IstioOperator spec.meshConfig / istioctl install -f.\n"
    )
    if existing is None:
        header += (
            "# Holds meshgate's provider only: Helm replaces the whole extensionProviders list, so\n"
            "# render with --existing-mesh-config FILE (helm get values istiod -n istio-system -o yaml)\n"
            "# to keep the providers the cluster already has.\n"
        )
    else:
        header += "# extensionProviders: the cluster's own, in order, with meshgate's added (or replaced).\n"
    body = yaml.dump(mesh_config(policy, existing), Dumper=_Dumper, sort_keys=False, width=1 << 16)
    return header + body


def write_dir(files: Mapping[str, str], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
