"""`meshgate models` (live health from a running meshgate) and `meshgate models check` (probe once).

Exit codes of both: 0 every probed model version has a ready endpoint; 1 some version has none (each is
named on stderr); 2 meshgate unreachable (`models`) or the policy is invalid (`check`). A version whose
model has probes disabled, or whose endpoints are all UNKNOWN, is not counted as down.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping

from meshgate._proto import admin_pb2
from meshgate.policy.model import Policy

from ._types import EndpointKey
from .probe import ProbeResult

__all__ = ["cmd_check", "cmd_models", "format_check", "format_status"]

_HEALTH_NAMES = {0: "UNKNOWN", 1: "HEALTHY", 2: "UNHEALTHY"}


def format_status(status: admin_pb2.Status) -> tuple[list[str], list[str]]:
    """Lines to print for an admin Status, and the versions with no ready endpoint ("model/version")."""
    lines, down = [], []
    for model in status.models:
        shadow = f", shadow {model.shadow_version} {model.shadow_percent:g}%" if model.shadow_version else ""
        lines.append(f"model {model.name} ({model.protocol}, {model.visibility}{shadow})")
        for version in model.versions:
            probed = list(version.endpoint_health)
            healthy = sum(1 for e in probed if e.health == admin_pb2.ENDPOINT_HEALTH_HEALTHY)
            unhealthy = sum(1 for e in probed if e.health == admin_pb2.ENDPOINT_HEALTH_UNHEALTHY)
            summary = f"{healthy}/{len(probed)} ready" if probed else "not probed"
            lines.append(f"  {version.name:<12} weight {version.weight:>3}  {summary}")
            for endpoint in probed:
                name = _HEALTH_NAMES.get(endpoint.health, str(endpoint.health))
                lines.append(f"    {endpoint.endpoint:<32} {name:<9}  {endpoint.detail}")
            if probed and unhealthy == len(probed):
                down.append(f"{model.name}/{version.name}")
    return lines, down


def format_check(policy: Policy, results: Mapping[EndpointKey, ProbeResult]) -> tuple[list[str], list[str]]:
    """Lines to print for one probe round, and the versions with no ready endpoint ("model/version")."""
    lines, down = [], []
    for model in policy.models:
        if not model.health_check.enabled:
            lines.append(f"model {model.name}: probes disabled")
            continue
        lines.append(f"model {model.name} ({model.protocol})")
        for version in model.versions:
            mine = {k: r for k, r in results.items() if (k.model, k.version) == (model.name, version.name)}
            ready = sum(1 for r in mine.values() if r.ok)
            lines.append(f"  {version.name:<12} {ready}/{len(mine)} ready")
            for key, result in sorted(mine.items()):
                state = "READY" if result.ok else "NOT READY"
                lines.append(f"    {key.endpoint:<32} {state:<9}  {result.detail}")
            if mine and ready == 0:
                down.append(f"{model.name}/{version.name}")
    return lines, down


def _report(lines: list[str], down: list[str]) -> int:
    for line in lines:
        print(line)
    for name in down:
        print(f"{name}: no ready endpoint", file=sys.stderr)
    return 1 if down else 0


def cmd_models(args: argparse.Namespace) -> int:
    """`meshgate models --addr HOST:PORT`: the models of a running meshgate and their live health."""
    import grpc

    from meshgate._proto import admin_pb2_grpc

    with grpc.insecure_channel(args.addr, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            status = admin_pb2_grpc.AdminStub(channel).GetStatus(
                admin_pb2.GetStatusRequest(), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{args.addr}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
    print(f"meshgate {status.version} at {args.addr}: policy generation {status.policy_generation}")
    return _report(*format_status(status))


def cmd_check(args: argparse.Namespace) -> int:
    """`meshgate models check --policy FILE`: probe every endpoint once, no server needed."""
    from meshgate.policy.load import load_or_report

    from .prober import check_once

    policy = load_or_report(args.policy)
    if policy is None:
        return 2
    if args.model:
        unknown = sorted(set(args.model) - {m.name for m in policy.models})
        if unknown:
            print(f"{args.policy}: no model named {', '.join(unknown)}", file=sys.stderr)
            return 2
        policy = policy.model_copy(update={"models": tuple(m for m in policy.models if m.name in args.model)})
    results = asyncio.run(check_once(policy))
    return _report(*format_check(policy, results))
