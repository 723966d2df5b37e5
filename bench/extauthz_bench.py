"""extauthz benchmark through a real Envoy (not a test). Run from the repository root:

    python bench/extauthz_bench.py [--duration 5] [--rounds 3] [--connections 16] [--tokens 12000]
                                   [--baseline DIR]

One Envoy (concurrency 1) with three listeners, all answering with a direct_response:
  (a) direct   - no ext_authz filter
  (b) noop     - ext_authz -> a no-op grpc.aio Check server (always OK): the Python gRPC transport floor
  (c) meshgate - ext_authz -> `meshgate serve` with an RS256 JWT issuer (JWKS over HTTP) + RBAC
(c) runs twice: one token reused (decision cache hits) and a fresh token per request (every signature
verified). Load comes from `wrk` (one thread, keep-alive) on 127.0.0.1 only; each run is bounded by
--duration. Server CPU per check is read from /proc/<pid>/stat of the Check server process.
`--baseline DIR` adds (c') the same extauthz server run from another tree (DIR holds a `meshgate/`
package, e.g. a copy taken before a change), measured in the same interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import bootstraps as b  # noqa: E402
from tests.harness.envoy import Envoy  # noqa: E402
from tests.harness.procs import Proc, child_env, wait_for_tcp  # noqa: E402
from tests.unit.test_extauthz_support import mint, policy_doc, public_jwks  # noqa: E402

PATH = "/v2/models/resnet/infer"
_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"

NOOP_SERVER = """
import asyncio, sys
import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2

class Noop(external_auth_pb2_grpc.AuthorizationServicer):
    async def Check(self, request, context):
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))

async def main():
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Noop(), server)
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""

EXTAUTHZ_SERVER = """
import asyncio, logging, sys
from pathlib import Path
import grpc
from prometheus_client import CollectorRegistry
from meshgate.extauthz import ExtAuthzService
from meshgate.policy import load_policy
from meshgate.policy.store import PolicyStore

async def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    store = PolicyStore(Path(sys.argv[1]))
    service = ExtAuthzService(store, registry=CollectorRegistry())
    store.apply(load_policy(sys.argv[1]))
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    service.add_to_server(server)
    server.add_insecure_port("127.0.0.1:" + sys.argv[2])
    await service.start()
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"inputs": []}'
wrk.headers["content-type"] = "application/json"
local tokens = {}
local i = 0
function init(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
end
function request()
  i = i + 1
  if i > #tokens then i = 1 end
  return wrk.format(nil, nil, {["authorization"] = "Bearer " .. tokens[i]})
end
function done(summary, latency, requests)
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  local fmt = 'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\\n'
  io.write(string.format(fmt,
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), bad))
end
"""


def ext_authz(cluster: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": _EXT_AUTHZ,
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "5s"},
            "failure_mode_allow": False,
            "with_request_body": {
                "max_request_bytes": 65536,
                "allow_partial_message": False,
                "pack_as_bytes": True,
            },
            "clear_route_cache": True,
        },
    }


def bootstrap(check_ports: dict[str, int]) -> dict[str, Any]:
    """Listener "direct" without ext_authz, and one listener per Check server, named like its cluster."""
    direct = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]
    listeners = [b.hcm_listener("direct", direct)]
    listeners += [b.hcm_listener(name, direct, http_filters=[ext_authz(name)]) for name in check_ports]
    clusters = [b.static_cluster(name, "127.0.0.1", port, http2=True) for name, port in check_ports.items()]
    return b.bootstrap(listeners, clusters)


class JwksServer:
    def __init__(self) -> None:
        body = json.dumps(public_jwks()).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, tokens_file: Path, *, duration: float, connections: int, work: Path) -> dict[str, Any]:
    script = work / "bench.lua"
    script.write_text(WRK_SCRIPT)
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--timeout", "10s", "-s", str(script),
            url, "--", str(tokens_file)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def measure(
    name: str, url: str, tokens: Path, pid: int | None, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    before = cpu_seconds(pid) if pid else 0.0
    result = run_wrk(url, tokens, duration=args.duration, connections=args.connections, work=work)
    if pid:
        result["cpu_us"] = (cpu_seconds(pid) - before) * 1e6
    result["name"] = name
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--tokens", type=int, default=12000, help="fresh tokens per round of the fresh-token run"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every configuration")
    parser.add_argument("--baseline", type=Path, help="also run (c) from this tree (a dir holding meshgate/)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("needs wrk on PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="extauthz-bench-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, work: Path) -> int:
    jwks = JwksServer()
    policy = work / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(policy_doc(issuer={"jwks_uri": f"http://127.0.0.1:{jwks.port}/jwks.json"}))
    )
    servers = {"noop": (NOOP_SERVER, child_env()), "meshgate": (EXTAUTHZ_SERVER, child_env())}
    if args.baseline is not None:  # the other tree first on PYTHONPATH: its meshgate package is imported
        env = child_env()
        env["PYTHONPATH"] = os.pathsep.join((str(args.baseline.resolve()), env["PYTHONPATH"]))
        servers["baseline"] = (EXTAUTHZ_SERVER, env)
    started: list[Any] = []
    try:
        check_ports, pids = {}, {}
        for name, (code, env) in servers.items():
            port = check_ports[name] = _free_port()
            # -P: no current directory on sys.path, so PYTHONPATH alone says which meshgate is imported
            argv = [sys.executable, "-P", "-c", code, *([str(policy)] if name != "noop" else []), str(port)]
            proc = Proc(f"{name}-check", argv, log_dir=work, env=env)
            started.append(proc.start())
            wait_for_tcp("127.0.0.1", port, 30, proc=proc)
            assert proc.pid is not None
            pids[name] = proc.pid
        envoy = Envoy(bootstrap(check_ports), workdir=work, log_level="warning")
        started.append(envoy.start())
        ports = {name: envoy.listener_port(name) for name in ("direct", *check_ports)}
        rows = _measure_all(args, work, ports, pids)
    finally:
        for item in reversed(started):
            item.stop()
        jwks.server.shutdown()
    _report(rows, args)
    return 1 if any(r["errors"] for r in rows) else 0


def _measure_all(
    args: argparse.Namespace, work: Path, ports: dict[str, int], pids: dict[str, int]
) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    reused = work / "reused.txt"
    reused.write_text(mint() + "\n")
    fresh = []
    for n in range(args.rounds):  # every round its own never-seen tokens
        fresh.append(work / f"fresh-{n}.txt")
        fresh[-1].write_text("\n".join(mint() for _ in range(args.tokens)) + "\n")
    print(
        f"minted {args.tokens * args.rounds} RS256 tokens in {time.perf_counter() - t0:.1f}s", file=sys.stderr
    )

    def url(listener: str) -> str:
        return f"http://127.0.0.1:{ports[listener]}{PATH}"

    for listener in ports:  # warm-up: connections, caches
        run_wrk(url(listener), reused, duration=1, connections=args.connections, work=work)
    runs: dict[str, list[dict[str, Any]]] = {}
    for n in range(args.rounds):  # interleaved, so a noisy neighbour hits every configuration alike
        plan = [
            ("(a) envoy direct_response", "direct", reused),
            ("(b) envoy + no-op grpc.aio Check", "noop", reused),
            ("(c) meshgate, one token reused", "meshgate", reused),
            ("(c) meshgate, fresh token each", "meshgate", fresh[n]),
        ]
        if "baseline" in ports:  # its own process and cache: the same never-seen tokens are fresh to it
            plan += [
                ("(c') baseline, one token reused", "baseline", reused),
                ("(c') baseline, fresh token each", "baseline", fresh[n]),
            ]
        for name, listener, tokens in plan:
            result = measure(name, url(listener), tokens, pids.get(listener), args, work)
            runs.setdefault(name, []).append(result)
    return [_combine(name, results) for name, results in runs.items()]


def _combine(name: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one configuration: total requests / total time; median p50 and p99; total CPU / requests."""
    requests = sum(r["requests"] for r in results)
    seconds = sum(r["duration_us"] for r in results) / 1e6
    row: dict[str, Any] = {
        "name": name,
        "requests": requests,
        "rps": requests / seconds,
        "p50_us": statistics.median(r["p50_us"] for r in results),
        "p99_us": statistics.median(r["p99_us"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "max_requests": max(r["requests"] for r in results),
    }
    if "cpu_us" in results[0]:
        row["cpu_us_per_check"] = sum(r["cpu_us"] for r in results) / max(requests, 1)
    return row


def _report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s x {args.rounds} interleaved rounds, "
          f"Envoy --concurrency 1, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'run':38} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/check':>13} {'errors':>7}")
    for r in rows:
        cpu = f"{r['cpu_us_per_check']:.0f}" if "cpu_us_per_check" in r else "-"
        print(f"{r['name']:38} {r['rps']:9.0f} {r['p50_us'] / 1000:8.2f} {r['p99_us'] / 1000:8.2f} {cpu:>13} "
              f"{r['errors']:7d}")  # fmt: skip
    base = rows[1]["rps"]
    for label, first in (("(c)", 2), ("(c')", 4))[: (len(rows) - 2) // 2]:
        print(f"{label}/(b) req/s, token reused: {rows[first]['rps'] / base:.2f}")
        print(f"{label}/(b) req/s, fresh token:  {rows[first + 1]['rps'] / base:.2f}")
    sent = max(r["max_requests"] for r in rows if "fresh" in r["name"])
    if sent > args.tokens:
        print(f"note: a fresh round sent {sent} requests for {args.tokens} tokens "
              "(later ones were cache hits): raise --tokens")  # fmt: skip


def _free_port() -> int:
    from tests.harness.procs import free_port

    return free_port()


if __name__ == "__main__":
    sys.exit(main())
