"""The `meshgate` command line. Each subcommand is a small function; imports happen when it runs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _cmd_validate(args: argparse.Namespace) -> int:
    from .policy import PolicyError, load_policy

    failed = False
    for path in args.files:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            failed = True
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            print(f"{path}: {len(exc.issues)} error(s)", file=sys.stderr)
            continue
        print(
            f"{path}: ok ({len(policy.tenants)} tenants, {len(policy.models)} models, "
            f"{len(policy.roles)} roles, {len(policy.quotas)} quotas)"
        )
    return 1 if failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import ServeConfig, main

    config = ServeConfig(
        policy=Path(args.policy),
        listen={"extauthz": args.extauthz, "ratelimit": args.ratelimit, "xds": args.xds},
        metrics=args.metrics,
        ready_file=Path(args.ready_file) if args.ready_file else None,
        watch=not args.no_watch,
        drain_delay=args.drain_delay,
        grace=args.grace,
        redis_url=args.redis_url,
    )
    return main(config)


def _cmd_status(args: argparse.Namespace) -> int:
    import grpc

    from ._proto import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(args.addr) as channel:
        try:
            status = admin_pb2_grpc.AdminStub(channel).GetStatus(
                admin_pb2.GetStatusRequest(), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{args.addr}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
    state = "SERVING" if status.serving else "NOT_SERVING"
    print(f"meshgate {status.version} at {args.addr}: {state}, policy generation {status.policy_generation}")
    print(f"policy: {status.policy_source}")
    print("components: " + ", ".join(f"{c.name}={'up' if c.up else 'DOWN'}" for c in status.components))
    for model in status.models:
        shadow = f", shadow {model.shadow_version} {model.shadow_percent:g}%" if model.shadow_version else ""
        print(f"model {model.name} ({model.protocol}, {model.visibility}{shadow})")
        for v in model.versions:
            print(f"  {v.name:<12} weight {v.weight:>3}  {' '.join(v.endpoints)}")
    return 0 if status.serving else 1


def _env(name: str, default: str) -> str:
    return os.environ.get(f"MESHGATE_{name.upper()}", default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshgate", description=__doc__)
    parser.add_argument("--log-level", default=_env("log_level", "info"), help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check policy files; print every error; exit 1 on any")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(func=_cmd_validate)

    serve = sub.add_parser(
        "serve",
        help="run extauthz, ratelimit and xds in one process",
        description="Every flag also reads MESHGATE_<FLAG> from the environment (e.g. MESHGATE_POLICY).",
    )
    serve.add_argument("--policy", default=_env("policy", "policy.yaml"), help="policy file (watched)")
    serve.add_argument("--extauthz", default=_env("extauthz", "0.0.0.0:9001"), help="ext_authz gRPC address")
    serve.add_argument(
        "--ratelimit", default=_env("ratelimit", "0.0.0.0:9002"), help="ratelimit gRPC address"
    )
    serve.add_argument("--xds", default=_env("xds", "0.0.0.0:18000"), help="ADS gRPC address")
    serve.add_argument(
        "--metrics", default=_env("metrics", "0.0.0.0:9090"), help="Prometheus /metrics address"
    )
    serve.add_argument(
        "--redis-url",
        default=os.environ.get("MESHGATE_REDIS_URL"),
        help="Redis for shared rate-limit counters (default: in memory)",
    )
    serve.add_argument("--ready-file", default=None, help="write the bound ports as JSON here once serving")
    serve.add_argument(
        "--no-watch", action="store_true", help="do not watch the policy file (SIGHUP still reloads)"
    )
    serve.add_argument(
        "--drain-delay",
        type=float,
        default=float(_env("drain_delay", "2")),
        help="seconds NOT_SERVING before the servers stop accepting",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=float(_env("grace", "10")),
        help="seconds in-flight calls get to finish",
    )
    serve.set_defaults(func=_cmd_serve)

    status = sub.add_parser("status", help="ask a running meshgate what it serves; exit 1 unless SERVING")
    status.add_argument(
        "--addr", default=_env("admin_addr", "127.0.0.1:18000"), help="any meshgate gRPC port"
    )
    status.add_argument("--timeout", type=float, default=5.0, help="seconds")
    status.set_defaults(func=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
