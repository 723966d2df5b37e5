"""The `meshgate` command line. Each subcommand is a small function; imports happen when it runs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _args

if TYPE_CHECKING:
    from .tls import ServerTLS

__all__ = ["main"]


def _cmd_validate(args: argparse.Namespace) -> int:
    from .policy import PolicyError
    from .policy.load import load_policy_and_warnings

    failed = False
    for path in args.files:
        try:
            policy, warnings = load_policy_and_warnings(path)  # one read, one parse
        except PolicyError as exc:
            failed = True
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            print(f"{path}: {len(exc.issues)} error(s)", file=sys.stderr)
            continue
        for warning in warnings:  # valid, probably not meant: printed, exit status unchanged
            where = f"{warning.source}:{warning.line}: {warning.path}"
            print(f"{where}: warning: {warning.message}", file=sys.stderr)
        print(
            f"{path}: ok ({len(policy.tenants)} tenants, {len(policy.models)} models, "
            f"{len(policy.roles)} roles, {len(policy.quotas)} quotas)"
        )
    return 1 if failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import ServeConfig, main

    config = ServeConfig(
        policy=Path(args.policy),
        listen={
            "extauthz": args.extauthz,
            "ratelimit": args.ratelimit,
            "xds": args.xds,
            "extauthz_http": args.extauthz_http,
        },
        metrics=args.metrics,
        ready_file=Path(args.ready_file) if args.ready_file else None,
        watch=not args.no_watch,
        reload_settle=args.reload_settle,
        drain_delay=args.drain_delay,
        grace=args.grace,
        redis_url=args.redis_url,
        tls=_server_tls(args),
        ratelimit_config=Path(args.ratelimit_config) if args.ratelimit_config else None,
        event_loop=args.event_loop,
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
    from .admin import print_status

    print_status(status, args.addr)
    return 0 if status.serving else 1


def _cmd_explain(args: argparse.Namespace) -> int:
    from .explain import render

    try:
        request = _explain_request(args)
    except (OSError, ValueError) as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return 2
    if args.addr:
        explanation = _explain_remote(args, request)
        if explanation is None:
            return 2
    else:
        import asyncio

        from .explain import explain, sources_from_policy
        from .policy import PolicyError, load_policy

        try:
            policy = load_policy(args.policy)
        except PolicyError as exc:
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            return 2
        explanation = asyncio.run(explain(request, sources_from_policy(policy)))
    if args.json:
        import json

        print(json.dumps(explanation, indent=2))
    else:
        sys.stdout.write(render(explanation))
    return 0


def _explain_request(args: argparse.Namespace) -> Any:
    from .explain import HttpRequest

    lines = list(args.header)
    if args.headers_file:
        try:
            text = Path(args.headers_file).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"--headers-file {args.headers_file}: not UTF-8 text") from None
        lines += [line for line in text.splitlines() if line.strip()]
    headers = dict(_args.header(line) for line in lines)
    body = Path(args.data_file).read_bytes() if args.data_file else (args.data or "").encode()
    return HttpRequest(args.method or ("POST" if body else "GET"), args.path, headers, body)


def _explain_remote(args: argparse.Namespace, request: Any) -> dict[str, Any] | None:
    import json

    import grpc

    from ._proto import admin_pb2, admin_pb2_grpc

    message = admin_pb2.ExplainRequest(
        method=request.method, path=request.path, headers=request.headers, body=request.body
    )
    with grpc.insecure_channel(args.addr) as channel:
        try:
            answer = admin_pb2_grpc.AdminStub(channel).Explain(message, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"{args.addr}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return None
    explained: dict[str, Any] = json.loads(answer.json)
    return explained


def _cmd_envoy_bootstrap(args: argparse.Namespace) -> int:
    from .xds.bootstrap import XdsTLS, envoy_bootstrap

    if (args.tls_cert is None) != (args.tls_key is None) or (
        (args.tls_cert or args.tls_sni) and not args.tls_ca
    ):
        print(
            "envoy-bootstrap: --tls-cert and --tls-key go together; they and --tls-sni need --tls-ca",
            file=sys.stderr,
        )
        return 2
    if not args.node_id.strip():
        print(
            "envoy-bootstrap: --node-id must name the node (meshgate reports the Envoy under it)",
            file=sys.stderr,
        )
        return 2
    tls = None
    if args.tls_ca:
        tls = XdsTLS(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key, sni=args.tls_sni)
    options = {"xds": args.xds, "admin_port": args.admin_port, "delta": not args.sotw, "tls": tls}
    sys.stdout.write(envoy_bootstrap(args.node_id, **options))
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from .meshconfig.cli import cmd_render

    return cmd_render(args)


def _cmd_models(args: argparse.Namespace) -> int:
    from .models.cli import cmd_models

    return cmd_models(args)


def _cmd_models_check(args: argparse.Namespace) -> int:
    from .models.cli import cmd_check

    return cmd_check(args)


def _server_tls(args: argparse.Namespace) -> ServerTLS | None:
    from .tls import ServerTLS

    if not (args.tls_cert or args.tls_key or args.tls_client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        raise SystemExit(
            "meshgate serve: --tls-cert and --tls-key go together (and --tls-client-ca needs both)"
        )
    ca = Path(args.tls_client_ca) if args.tls_client_ca else None
    return ServerTLS(cert_file=Path(args.tls_cert), key_file=Path(args.tls_key), client_ca_file=ca)


def _parser() -> argparse.ArgumentParser:
    from ._parser import build_parser

    handlers = {name[5:]: func for name, func in globals().items() if name.startswith("_cmd_")}
    return build_parser(handlers, __doc__)


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
