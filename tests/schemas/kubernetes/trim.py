"""Copy the Kubernetes JSON schemas the chart tests need out of a kubernetes-validate wheel, trimmed.

Usage (see README.md here):
    pip download kubernetes-validate==1.37.0 --no-deps -d /tmp/kv && unzip -q /tmp/kv/*.whl -d /tmp/kv/x
    python tests/schemas/kubernetes/trim.py /tmp/kv/x/kubernetes_validate/kubernetes-json-schema v1.30.0

Writes `<version>-strict/<kind>-<group>-<version>.json` for each kind in KINDS and one `_definitions.json`
holding only the `$defs` those kinds reach (the wheel's file holds every type of the API).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

KINDS = (
    "configmap-v1",
    "deployment-apps-v1",
    "horizontalpodautoscaler-autoscaling-v2",
    "networkpolicy-networking-v1",
    "poddisruptionbudget-policy-v1",
    "role-rbac-v1",
    "rolebinding-rbac-v1",
    "secret-v1",
    "service-v1",
    "serviceaccount-v1",
)
_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        for prefix in _PREFIXES:
            if isinstance(ref, str) and ref.startswith(prefix):
                found.add(ref[len(prefix):])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def main(source: Path, version: str) -> None:
    src = source / f"{version}-local-strict"
    out = Path(__file__).resolve().parent / f"{version}-strict"
    out.mkdir(exist_ok=True)
    full = json.loads((src / "_definitions.json").read_text())
    defs = full["$defs"]
    todo: set[str] = set()
    for kind in KINDS:
        schema = json.loads((src / f"{kind}.json").read_text())
        (out / f"{kind}.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        todo |= _refs(schema)
    keep: dict[str, Any] = {}
    while todo:
        name = todo.pop()
        if name not in keep:
            keep[name] = defs[name]
            todo |= _refs(defs[name]) - keep.keys()
    trimmed = {"$schema": full["$schema"], "$id": full["$id"], "$defs": dict(sorted(keep.items()))}
    text = json.dumps(trimmed, indent=1, sort_keys=True) + "\n"
    (out / "_definitions.json").write_text(text)
    print(f"{out}: {len(KINDS)} kinds, {len(keep)} of {len(defs)} definitions")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
