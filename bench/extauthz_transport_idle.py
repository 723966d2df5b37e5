"""One ext_authz call from Envoy after the authorization server was idle: gRPC vs HTTP (not a test).

    python bench/extauthz_transport_idle.py [--gap 0.05] [--calls 150] [--rounds 2]

Why (docs/llm.md, "Where the first token's time goes"): a gateway calls meshgate once per LLM request,
tens of ms apart, so each call finds meshgate idle. Starts one Envoy (1.40, `--concurrency 1`) with three
listeners, each answering a POST with a JSON body by a direct response after a buffer filter: `none` (no
ext_authz), `grpc` (ext_authz `grpc_service`, the body packed as bytes, as meshgate's gateway sends it, to
a no-op grpc.aio Check on uvloop: `CheckResponse{status: OK}`) and `http` (ext_authz `http_service`
with the body, `dynamic_metadata_from_headers` as a token count would need, to a minimal HTTP/1.1
answer of 200 on uvloop's asyncio streams). Both servers do no work: the difference is the transport.
The client sends one request at a time on a kept-alive connection, back to back (hot) and after sleeping
`--gap` seconds before each (idle), the listeners interleaved. Prints p50/p90 in µs.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.envoy import Envoy  # noqa: E402
from tests.harness.procs import free_port  # noqa: E402

ROWS = ("none", "grpc", "http")
_TYPE = "type.googleapis.com/envoy.extensions."

SERVER = r"""
import asyncio, sys
import grpc, uvloop

kind, port = sys.argv[1], int(sys.argv[2])

async def check(raw, context):
    return b"\x0a\x00"  # CheckResponse{status: {code: 0}}: OK

async def http(reader, writer):
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-tokens: 42\r\n\r\n")

async def main():
    if kind == "http":
        server = await asyncio.start_server(http, "127.0.0.1", port)
        print("ready", flush=True)
        await server.serve_forever()
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(check)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("envoy.service.auth.v3.Authorization", {"Check": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()

uvloop.run(main())
"""


def _filter(name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "typed_config": config}


def _ext_authz(row: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "@type": _TYPE + "filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
    }
    if row == "grpc":
        config["grpc_service"] = {"envoy_grpc": {"cluster_name": "grpc"}, "timeout": "1s"}
        config["with_request_body"] = {"max_request_bytes": 1 << 20, "pack_as_bytes": True}
    else:
        config["http_service"] = {
            "server_uri": {"uri": "http://127.0.0.1", "cluster": "http", "timeout": "1s"},
            "authorization_response": {
                "dynamic_metadata_from_headers": {"patterns": [{"exact": "x-tokens"}]}
            },
        }
        config["with_request_body"] = {"max_request_bytes": 1 << 20}
    return _filter("envoy.filters.http.ext_authz", config)


def listener(row: str) -> dict[str, Any]:
    # the buffer filter reads the body first in every row, so the direct response keeps the connection
    filters = [
        _filter(
            "envoy.filters.http.buffer",
            {"@type": _TYPE + "filters.http.buffer.v3.Buffer", "max_request_bytes": 1 << 20},
        )
    ]
    if row != "none":
        filters.append(_ext_authz(row))
    filters.append(_filter("envoy.filters.http.router", {"@type": _TYPE + "filters.http.router.v3.Router"}))
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    hcm = {
        "@type": _TYPE + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": row,
        "http_filters": filters,
        "route_config": {"virtual_hosts": [{"name": row, "domains": ["*"], "routes": [route]}]},
    }
    return {
        "name": row,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [_filter("envoy.filters.network.http_connection_manager", hcm)]}],
    }


def cluster(name: str, port: int, *, http2: bool) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    out: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }
    if http2:
        options = {
            "@type": _TYPE + "upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
        out["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options
        }
    return out


def caller(port: int) -> Callable[[], None]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = b'{"model":"zen-chat","stream":true,"messages":[{"role":"user","content":"now or never?"}]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s"
    ) % (len(body), body)

    def once() -> None:
        sock.sendall(request)
        answer = b""
        while not answer.endswith(b"\r\n\r\nok"):
            data = sock.recv(4096)
            if not data:
                raise RuntimeError(f"connection closed; got {answer!r}")
            answer += data
        if b" 200 " not in answer.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"not a 200: {answer!r}")

    return once


def measure(calls: dict[str, Callable[[], None]], gap: float, n: int) -> dict[str, tuple[float, float]]:
    rtt: dict[str, list[float]] = {row: [] for row in calls}
    for _ in range(n):
        for row, call in calls.items():
            if gap:
                time.sleep(gap)
            started = time.perf_counter()
            call()
            rtt[row].append((time.perf_counter() - started) * 1e6)
    return {row: (statistics.median(v), sorted(v)[int(0.9 * len(v))]) for row, v in rtt.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gap", type=float, default=0.05, help="idle seconds before each idle call")
    parser.add_argument("--calls", type=int, default=150, help="idle calls per row and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ports = {"grpc": free_port(), "http": free_port()}
    servers = [
        subprocess.Popen([sys.executable, "-c", SERVER, kind, str(port)], stdout=subprocess.PIPE, text=True)
        for kind, port in ports.items()
    ]
    with tempfile.TemporaryDirectory(prefix="authz-idle-") as tmp:
        envoy = None
        try:
            for server in servers:
                assert server.stdout is not None
                server.stdout.readline()
            boot = {
                "static_resources": {
                    "listeners": [listener(row) for row in ROWS],
                    "clusters": [
                        cluster("grpc", ports["grpc"], http2=True),
                        cluster("http", ports["http"], http2=False),
                    ],
                }
            }
            envoy = Envoy(boot, workdir=Path(tmp), log_level="warning", name="authz-idle").start()
            calls = {row: caller(envoy.listener_port(row)) for row in ROWS}
            measure(calls, 0, 100)  # warm-up; proves every row answers 200
            with open("/proc/loadavg") as loadavg:
                print(f"loadavg {' '.join(loadavg.read().split()[:3])}; idle gap {args.gap * 1000:g} ms")
            print(f"{'row':5} {'round':>5} {'hot p50':>9} {'hot p90':>9} {'idle p50':>9} {'idle p90':>9}")
            for n in range(args.rounds):
                hot, idle = measure(calls, 0, 10 * args.calls), measure(calls, args.gap, args.calls)
                for row in ROWS:
                    print(
                        f"{row:5} {n + 1:5} {hot[row][0]:7.0f}us {hot[row][1]:7.0f}us "
                        f"{idle[row][0]:7.0f}us {idle[row][1]:7.0f}us"
                    )
            ok = {row: envoy.stat(f"http.{row}.ext_authz.ok") for row in ("grpc", "http")}
            print(f"ext_authz ok: {ok}")
        finally:
            if envoy is not None:
                envoy.stop()
            for server in servers:
                server.terminate()
                server.wait()


if __name__ == "__main__":
    main()
