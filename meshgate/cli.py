"""The `meshgate` command line. Each subcommand is a small function; imports happen when it runs."""

from __future__ import annotations

import argparse
import logging
import os
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


def _env(name: str, default: str) -> str:
    return os.environ.get(f"MESHGATE_{name.upper()}", default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshgate", description=__doc__)
    parser.add_argument(
        "--log-level",
        type=_args.log_level,
        default=_env("log_level", "info"),
        help="debug, info, warning, error",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check policy files; print every error; exit 1 on any")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(func=_cmd_validate)

    render = sub.add_parser(
        "render",
        help="render the policy as Istio / Envoy Gateway / KServe manifests (strictly schema-checked)",
        description="Deterministic YAML; every object is validated against the CRD schemas first. "
        "See docs/meshconfig.md.",
    )
    render.add_argument("--policy", required=True, help="policy file")
    render.add_argument("--target", choices=["istio", "envoy-gateway", "kserve", "all"], default="all")
    render.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="write one file per kind here (--target all: one directory per target); default: one stream",
    )
    render.add_argument(
        "--mesh-config",
        action="store_true",
        help="print only the istiod meshConfig values that register meshgate as ext_authz provider",
    )
    render.add_argument(
        "--existing-mesh-config",
        metavar="FILE",
        help="with --mesh-config: the cluster's mesh config (istiod Helm values, or the istio ConfigMap); "
        "its extension providers are kept",
    )
    render.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 1, nothing written) when a target cannot enforce a policy feature as written",
    )
    render.add_argument(
        "--schemas", metavar="DIR", help="validate against the CRDs under DIR (default: packaged)"
    )
    render.set_defaults(func=_cmd_render)

    serve = sub.add_parser(
        "serve",
        help="run extauthz, ratelimit and xds in one process",
        description="Every flag also reads MESHGATE_<FLAG> from the environment (e.g. MESHGATE_POLICY).",
    )
    serve.add_argument("--policy", default=_env("policy", "policy.yaml"), help="policy file (watched)")
    serve.add_argument(
        "--extauthz",
        type=_args.listen_address,
        default=_env("extauthz", "0.0.0.0:9001"),
        help="ext_authz gRPC address",
    )
    serve.add_argument(
        "--extauthz-http",
        type=_args.listen_address,
        default=_env("extauthz_http", "0.0.0.0:9003"),
        help="ext_authz HTTP address (gateway.ext_authz.transport: http)",
    )
    serve.add_argument(
        "--ratelimit",
        type=_args.listen_address,
        default=_env("ratelimit", "0.0.0.0:9002"),
        help="ratelimit gRPC address",
    )
    serve.add_argument(
        "--xds", type=_args.listen_address, default=_env("xds", "0.0.0.0:18000"), help="ADS gRPC address"
    )
    serve.add_argument(
        "--metrics",
        type=_args.listen_address,
        default=_env("metrics", "0.0.0.0:9090"),
        help="Prometheus /metrics address",
    )
    serve.add_argument(
        "--redis-url",
        default=os.environ.get("MESHGATE_REDIS_URL"),
        help="Redis for shared rate-limit counters (default: in memory)",
    )
    serve.add_argument(
        "--ratelimit-config",
        default=os.environ.get("MESHGATE_RATELIMIT_CONFIG"),
        help="directory of envoyproxy/ratelimit YAML files (watched), beside the quotas",
    )
    serve.add_argument(
        "--tls-cert",
        default=os.environ.get("MESHGATE_TLS_CERT"),
        help="PEM certificate (with --tls-key): TLS on the xds port",
    )
    serve.add_argument("--tls-key", default=os.environ.get("MESHGATE_TLS_KEY"), help="its PEM private key")
    serve.add_argument(
        "--tls-client-ca",
        default=os.environ.get("MESHGATE_TLS_CLIENT_CA"),
        help="PEM CA bundle: require client certificates signed by it (mTLS)",
    )
    serve.add_argument("--ready-file", default=None, help="write the bound ports as JSON here once serving")
    serve.add_argument(
        "--no-watch", action="store_true", help="do not watch the policy file (SIGHUP still reloads)"
    )
    serve.add_argument(
        "--reload-settle",
        type=_args.seconds,
        default=_env("reload_settle", "1"),
        metavar="SECONDS",
        help="a changed policy, ratelimit config or certificate file is read again this long after it "
        "changed and applied only if its bytes are the same (docs/policy.md)",
    )
    serve.add_argument(
        "--drain-delay",
        type=_args.seconds,
        default=_env("drain_delay", "2"),
        help="seconds NOT_SERVING before the servers stop accepting",
    )
    serve.add_argument(
        "--grace",
        type=_args.seconds,
        default=_env("grace", "10"),
        help="seconds in-flight calls get to finish",
    )
    serve.add_argument(
        "--event-loop",
        choices=["auto", "uvloop", "asyncio"],
        default=_env("event_loop", "auto"),
        help="event loop: uvloop (libuv), asyncio (the standard library's), auto (uvloop when installed)",
    )
    serve.set_defaults(func=_cmd_serve)

    boot = sub.add_parser(
        "envoy-bootstrap",
        help="print the minimal Envoy bootstrap (ADS to meshgate); run it with envoy -c",
    )
    boot.add_argument("--node-id", required=True, help="the Envoy node id meshgate reports it under")
    boot.add_argument(
        "--xds",
        type=_args.address,
        default="127.0.0.1:18000",
        help="meshgate's ADS address, as Envoy reaches it",
    )
    boot.add_argument("--admin-port", type=_args.port, default=9901, help="Envoy admin port on 127.0.0.1")
    boot.add_argument("--sotw", action="store_true", help="state-of-the-world ADS instead of delta")
    boot.add_argument("--tls-ca", help="TLS to the ADS address: trust this CA (PEM file)")
    boot.add_argument("--tls-cert", help="with --tls-key: mutual TLS, Envoy presents this certificate (PEM)")
    boot.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    boot.add_argument("--tls-sni", help="SNI for the ADS connection (default: the --xds host)")
    boot.set_defaults(func=_cmd_envoy_bootstrap)

    status = sub.add_parser("status", help="ask a running meshgate what it serves; exit 1 unless SERVING")
    status.add_argument(
        "--addr",
        type=_args.address,
        default=_env("admin_addr", "127.0.0.1:18000"),
        help="any meshgate gRPC port",
    )
    status.add_argument("--timeout", type=_args.timeout, default=5.0, help="seconds")
    status.set_defaults(func=_cmd_status)

    explain = sub.add_parser(
        "explain",
        help="what meshgate would do with one request, and why (identity, decision, route, quotas)",
        description="Decided by the same code that serves: a policy file compiled here (--policy), or a "
        "running meshgate's live policy, routes and counters (--addr, which also says what each quota has "
        "left). Nothing is counted. Credentials are used, never printed; pass them with --headers-file to "
        "keep them off the command line. See docs/operations.md.",
    )
    explain.add_argument(
        "path", type=_args.request_path, help="the request's path (and query), e.g. /v2/models/demo/infer"
    )
    source = explain.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", help="explain with this policy file")
    source.add_argument(
        "--addr", type=_args.address, help="explain with a running meshgate (any of its gRPC ports)"
    )
    explain.add_argument(
        "-X", "--method", type=_args.method, help="HTTP method (default: POST with a body, else GET)"
    )
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                         help="a request header (repeatable)")  # fmt: skip
    explain.add_argument("--headers-file", metavar="FILE", help="request headers, one 'Name: value' a line")
    body = explain.add_mutually_exclusive_group()
    body.add_argument("--data-file", metavar="FILE", help="the request body, read from FILE")
    body.add_argument("--data", metavar="TEXT", help="the request body")
    explain.add_argument("--json", action="store_true", help="print the explanation as JSON")
    explain.add_argument("--timeout", type=_args.timeout, default=5.0, help="seconds (with --addr)")
    explain.set_defaults(func=_cmd_explain)

    models = sub.add_parser(
        "models",
        help="models, versions, weights, shadow and live endpoint health of a running meshgate",
        description="Exit 0: every probed version has a ready endpoint; 1: some has none; 2: unreachable.",
    )
    models.add_argument(
        "--addr",
        type=_args.address,
        default=_env("admin_addr", "127.0.0.1:18000"),
        help="any meshgate gRPC port",
    )
    models.add_argument("--timeout", type=_args.timeout, default=5.0, help="seconds")
    models.set_defaults(func=_cmd_models)
    models_sub = models.add_subparsers(dest="models_command")
    check = models_sub.add_parser(
        "check",
        help="probe every model endpoint of a policy once (no server needed)",
        description="Exit 0: every version has a ready endpoint; 1: some has none (named); 2: bad policy.",
    )
    check.add_argument("--policy", default=_env("policy", "policy.yaml"), help="policy file")
    check.add_argument("--model", action="append", help="check only this model (repeatable)")
    check.set_defaults(func=_cmd_models_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
