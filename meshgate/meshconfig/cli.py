"""`meshgate render`: render, say what each target cannot enforce, validate, write (docs/meshconfig.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from ..policy.load import load_or_report
from ..policy.model import Policy
from .gaps import gaps
from .render import (
    SINGLE_TARGETS,
    dump_yaml,
    mesh_config_yaml,
    render,
    render_files,
    validate_objects,
    write_dir,
)
from .validate import SchemaSet

__all__ = ["cmd_render", "read_mesh_config"]


def read_mesh_config(path: str) -> dict[str, Any]:
    """The cluster's mesh config from FILE: istiod's Helm values (`meshConfig:`), the `mesh` document of
    the `istio` ConfigMap, or that ConfigMap itself (`kubectl get cm istio -n istio-system -o yaml`)."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a mapping")
    if doc.get("kind") == "ConfigMap":
        doc = yaml.safe_load((doc.get("data") or {}).get("mesh") or "") or {}
    return doc


def cmd_render(args: argparse.Namespace) -> int:
    policy = load_or_report(args.policy)
    if policy is None:
        return 1
    if args.mesh_config:
        try:
            existing = read_mesh_config(args.existing_mesh_config) if args.existing_mesh_config else None
        except (OSError, ValueError, yaml.YAMLError) as exc:
            print(f"meshgate render: --existing-mesh-config: {exc}", file=sys.stderr)
            return 2
        sys.stdout.write(mesh_config_yaml(policy, existing))
        return 0
    targets = list(SINGLE_TARGETS) if args.target == "all" else [args.target]
    if len(targets) > 1 and args.output is None:
        print("meshgate render: --target all writes one directory per target: give -o DIR", file=sys.stderr)
        return 2
    if not _report_gaps(policy, targets, strict=args.strict):
        return 1
    try:
        rendered = {target: render(policy, target) for target in targets}
    except ValueError as exc:  # NameClash, ServiceNameClash: objects that would replace each other
        print(f"meshgate render: {args.policy}: {exc}; nothing written", file=sys.stderr)
        return 1
    schemas = SchemaSet.from_dir(args.schemas) if args.schemas else None
    if schemas is not None and not schemas:
        print(f"meshgate render: --schemas {args.schemas}: no CRD found there", file=sys.stderr)
        return 2
    problems = [p for objs in rendered.values() for p in validate_objects(objs, schemas)]
    if problems:
        for problem in problems:
            print(f"refused: {problem}", file=sys.stderr)
        print(f"{args.policy}: {len(problems)} schema error(s); nothing written", file=sys.stderr)
        return 1
    if args.output is None:
        sys.stdout.write(dump_yaml(rendered[targets[0]]))
        return 0
    for target, objs in rendered.items():
        directory = Path(args.output) / target if len(targets) > 1 else Path(args.output)
        try:
            written = write_dir(render_files(objs), directory)
        except OSError as exc:
            print(
                f"meshgate render: -o {args.output}: {exc.strerror or exc} ({exc.filename})", file=sys.stderr
            )
            return 1
        for path in written:
            print(path)
    return 0


def _report_gaps(policy: Policy, targets: list[str], *, strict: bool) -> bool:
    """Print every gap on stderr; False (nothing may be written) when `strict` and there is one."""
    found = [gap for target in targets for gap in gaps(policy, target)]
    for gap in found:
        print(f"{'refused' if strict else 'warning'}: {gap}", file=sys.stderr)
    if strict and found:
        print(
            f"meshgate render: {len(found)} policy feature(s) not enforced as written (--strict); "
            "nothing written",
            file=sys.stderr,
        )
        return False
    return True
