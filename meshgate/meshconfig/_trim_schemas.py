"""Rebuild meshgate/meshconfig/schemas/crds.json.gz: the CRD versions `meshgate render` emits, trimmed.

Reproducible:
    python -m meshgate.meshconfig._trim_schemas tests/schemas meshgate/meshconfig/schemas/crds.json.gz

Keeps, for each needed (group, kind), only the needed served versions and only the fields validation
reads (group, kind, version name, served, openAPIV3Schema); drops every `description` keyword. The
full upstream files, with their source, tag and licence, are in tests/schemas/ (see its README.md);
tests/unit/test_meshconfig_validate.py checks that this file equals the trim of those.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .validate import _read_crds

__all__ = ["NEEDED", "main", "trim"]

# (group, kind) -> versions emitted by the renderers
NEEDED: dict[tuple[str, str], tuple[str, ...]] = {
    ("networking.istio.io", "Gateway"): ("v1",),
    ("networking.istio.io", "VirtualService"): ("v1",),
    ("networking.istio.io", "DestinationRule"): ("v1",),
    ("networking.istio.io", "EnvoyFilter"): ("v1alpha3",),
    ("security.istio.io", "AuthorizationPolicy"): ("v1",),
    ("security.istio.io", "PeerAuthentication"): ("v1",),
    ("security.istio.io", "RequestAuthentication"): ("v1",),
    ("serving.kserve.io", "InferenceService"): ("v1beta1",),
    ("gateway.networking.k8s.io", "Gateway"): ("v1",),
    ("gateway.networking.k8s.io", "HTTPRoute"): ("v1",),
    ("gateway.networking.k8s.io", "GRPCRoute"): ("v1",),
    ("gateway.networking.k8s.io", "ReferenceGrant"): ("v1beta1",),
    ("gateway.envoyproxy.io", "Backend"): ("v1alpha1",),
    ("gateway.envoyproxy.io", "SecurityPolicy"): ("v1alpha1",),
    ("gateway.envoyproxy.io", "BackendTrafficPolicy"): ("v1alpha1",),
    ("gateway.envoyproxy.io", "ClientTrafficPolicy"): ("v1alpha1",),
    ("gateway.envoyproxy.io", "HTTPRouteFilter"): ("v1alpha1",),
    ("aigateway.envoyproxy.io", "AIGatewayRoute"): ("v1beta1",),
    ("aigateway.envoyproxy.io", "AIServiceBackend"): ("v1beta1",),
}


def _strip(schema: Any, *, in_properties: bool = False) -> Any:
    if isinstance(schema, Mapping):
        return {
            k: _strip(v, in_properties=(k in ("properties", "patternProperties") and not in_properties))
            for k, v in schema.items()
            if in_properties or k != "description"
        }
    if isinstance(schema, list):
        return [_strip(v) for v in schema]
    return schema


def trim(source: Path) -> list[dict[str, Any]]:
    """The trimmed CRDs found under `source`, sorted by group and kind."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(source.rglob("*")):
        for crd in _read_crds(path):
            spec = crd["spec"]
            key = (spec["group"], spec["names"]["kind"])
            if key not in NEEDED or key in out:
                continue
            versions = [
                {
                    "name": v["name"],
                    "served": True,
                    "schema": {"openAPIV3Schema": _strip(v["schema"]["openAPIV3Schema"])},
                }
                for v in spec["versions"]
                if v["name"] in NEEDED[key] and v.get("served")
            ]
            out[key] = {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": crd["metadata"]["name"]},
                "spec": {"group": key[0], "names": {"kind": key[1]}, "versions": versions},
            }
    missing = sorted(set(NEEDED) - set(out))
    if missing:
        raise SystemExit(f"{source}: no CRD for {missing}")
    return [out[k] for k in sorted(out)]


def dump(crds: list[dict[str, Any]]) -> bytes:
    """Canonical JSON, gzipped with a zero timestamp so that the same input gives the same bytes."""
    text = json.dumps(crds, sort_keys=True, separators=(",", ":")) + "\n"
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def main(argv: list[str]) -> int:
    source, target = Path(argv[0]), Path(argv[1])
    target.write_bytes(dump(trim(source)))
    print(f"{target}: {target.stat().st_size} bytes")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
