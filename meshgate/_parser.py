"""The `meshgate` command line's flags (cli.py runs the subcommands): every flag also reads a MESHGATE_*
default from the environment where it says so, checked by the same type (meshgate/_args.py)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping

from . import _args

__all__ = ["build_parser", "env"]

Handler = Callable[[argparse.Namespace], int]
_LISTEN = (
    ("extauthz", "0.0.0.0:9001", "ext_authz gRPC address"),
    ("extauthz_http", "0.0.0.0:9003", "ext_authz HTTP address (gateway.ext_authz.transport: http)"),
    ("ratelimit", "0.0.0.0:9002", "ratelimit gRPC address"),
    ("xds", "0.0.0.0:18000", "ADS gRPC address"),
    ("metrics", "0.0.0.0:9090", "Prometheus /metrics address"),
)
"""serve's listen flags (`--<name>`, MESHGATE_<NAME>): name, default, help."""


def env(name: str, default: str) -> str:
    return os.environ.get(f"MESHGATE_{name.upper()}", default)


def build_parser(handlers: Mapping[str, Handler], description: str | None) -> argparse.ArgumentParser:
    """The `meshgate` parser; `handlers`: each subcommand's function by name (cli.py's `_cmd_<name>`)."""
    parser = argparse.ArgumentParser(prog="meshgate", description=description)
    parser.add_argument(
        "--log-level",
        type=_args.log_level,
        default=env("log_level", "info"),
        help="debug, info, warning, error",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check policy files; print every error; exit 1 on any")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(func=handlers["validate"])

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
    render.set_defaults(func=handlers["render"])

    serve = sub.add_parser(
        "serve",
        help="run extauthz, ratelimit and xds in one process",
        description="Every flag also reads MESHGATE_<FLAG> from the environment (e.g. MESHGATE_POLICY).",
    )
    serve.add_argument("--policy", default=env("policy", "policy.yaml"), help="policy file (watched)")
    for name, address, what in _LISTEN:
        flag = "--" + name.replace("_", "-")
        serve.add_argument(flag, type=_args.listen_address, default=env(name, address), help=what)
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
        default=env("reload_settle", "1"),
        metavar="SECONDS",
        help="a changed policy, ratelimit config or certificate file is read again this long after it "
        "changed and applied only if its bytes are the same (docs/policy.md)",
    )
    serve.add_argument(
        "--drain-delay",
        type=_args.seconds,
        default=env("drain_delay", "2"),
        help="seconds NOT_SERVING before the servers stop accepting",
    )
    serve.add_argument(
        "--grace",
        type=_args.seconds,
        default=env("grace", "10"),
        help="seconds in-flight calls get to finish",
    )
    serve.add_argument(
        "--event-loop",
        choices=["auto", "uvloop", "asyncio"],
        default=env("event_loop", "auto"),
        help="event loop: uvloop (libuv), asyncio (the standard library's), auto (uvloop when installed)",
    )
    serve.set_defaults(func=handlers["serve"])

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
    boot.set_defaults(func=handlers["envoy_bootstrap"])

    status = sub.add_parser("status", help="ask a running meshgate what it serves; exit 1 unless SERVING")
    _client_flags(status)
    status.set_defaults(func=handlers["status"])

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
    explain.set_defaults(func=handlers["explain"])

    models = sub.add_parser(
        "models",
        help="models, versions, weights, shadow and live endpoint health of a running meshgate",
        description="Exit 0: every probed version has a ready endpoint; 1: some has none; 2: unreachable.",
    )
    _client_flags(models)
    models.set_defaults(func=handlers["models"])
    models_sub = models.add_subparsers(dest="models_command")
    check = models_sub.add_parser(
        "check",
        help="probe every model endpoint of a policy once (no server needed)",
        description="Exit 0: every version has a ready endpoint; 1: some has none (named); 2: bad policy.",
    )
    check.add_argument("--policy", default=env("policy", "policy.yaml"), help="policy file")
    check.add_argument("--model", action="append", help="check only this model (repeatable)")
    check.set_defaults(func=handlers["models_check"])
    return parser


def _client_flags(parser: argparse.ArgumentParser) -> None:
    """`--addr` and `--timeout` of a command that asks a running meshgate (status, models)."""
    parser.add_argument(
        "--addr",
        type=_args.address,
        default=env("admin_addr", "127.0.0.1:18000"),
        help="any meshgate gRPC port",
    )
    parser.add_argument("--timeout", type=_args.timeout, default=5.0, help="seconds")
