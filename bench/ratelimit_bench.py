"""ShouldRateLimit side by side: (a) a no-op grpc.aio RLS server, (b) meshgate with the memory store,
(c) meshgate with Redis; 1 and 5 descriptors per request. Not a test: run it by hand.

    python bench/ratelimit_bench.py [--seconds 5] [--concurrency 16]

Each server runs in its own process (`--serve KIND`); this process is the client (grpc.aio, a fixed
number of calls in flight). It prints requests/s, p50 and p99 latency, the ratios (b)/(a) and (c)/(a)
of requests/s and of server CPU time per request (steadier than requests/s on a shared machine), and
Redis round trips per request counted by Redis itself (INFO commandstats: eval + evalsha calls divided
by requests; the commands the script runs inside Redis are not round trips). The Redis store timeout
is raised to 1 s (BENCH_REDIS_TIMEOUT) so that a saturated server measures throughput rather than its
50 ms timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 50
QUOTAS = [f"q{i}" for i in range(5)]
POLICY = {
    "tenants": [{"name": "acme", "quotas": QUOTAS}],
    "quotas": [
        {"name": q, "per": ["tenant", "user"], "limit": 1_000_000_000, "window": "minute"} for q in QUOTAS
    ],
}


# --- servers (child processes) ------------------------------------------------------------------------
class NoOp(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        response = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)
        for _ in request.descriptors:
            response.statuses.add(code=rls_pb2.RateLimitResponse.OK)
        return response


async def serve(kind: str, redis_url: str | None, port_file: Path) -> None:
    server = grpc.aio.server()
    if kind == "noop":
        servicer: Any = NoOp()
    else:
        from prometheus_client import CollectorRegistry

        from meshgate.policy.model import Policy
        from meshgate.ratelimit import Limiter, MemoryStore, RateLimitServicer, Settings, compile_policy
        from meshgate.ratelimit.metrics import RateLimitMetrics
        from meshgate.ratelimit.model import RateLimitConfig
        from meshgate.ratelimit.redis_store import RedisStore

        domain, tree = compile_policy(Policy.model_validate(POLICY, strict=False))
        store: Any = (
            RedisStore(redis_url, timeout=float(os.environ.get("BENCH_REDIS_TIMEOUT", "1")))
            if kind == "redis"
            else MemoryStore()
        )
        metrics = RateLimitMetrics(CollectorRegistry())
        limiter = Limiter(
            store,
            config=RateLimitConfig({domain: tree}),
            settings=Settings(response_headers="x-ratelimit"),
            metrics=metrics,
        )
        servicer = RateLimitServicer(limiter, metrics, kind)
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


# --- client ---------------------------------------------------------------------------------------------
def make_requests(descriptors: int, users: int = 200) -> list[Any]:
    out = []
    for u in range(users):
        request = rls_pb2.RateLimitRequest(domain="meshgate")
        for q in QUOTAS[:descriptors]:
            d = request.descriptors.add()
            for key, value in (("quota", q), ("tenant", "acme"), ("user", f"user-{u}")):
                d.entries.add(key=key, value=value)
        out.append(request)
    return out


async def load(port: int, descriptors: int, seconds: float, concurrency: int) -> dict[str, float]:
    requests = make_requests(descriptors)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        for r in requests[:WARMUP]:  # warm up
            await stub.ShouldRateLimit(r)
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                reply = await stub.ShouldRateLimit(requests[i % len(requests)])
                latencies.append(time.perf_counter() - started)
                assert reply.overall_code == rls_pb2.RateLimitResponse.OK
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": cuts[49] * 1e3,
        "p99_ms": cuts[98] * 1e3,
    }


def start_server(kind: str, redis_url: str | None, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / f"{kind}.port"
    argv = [sys.executable, __file__, "--serve", kind, "--port-file", str(port_file)]
    if redis_url:
        argv += ["--redis-url", redis_url]
    proc = subprocess.Popen(argv, cwd=ROOT)
    for _ in range(400):
        if port_file.exists() and port_file.read_text():
            return proc, int(port_file.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{kind} server did not start")


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    sys.path.insert(0, str(ROOT))
    from tests.harness.procs import free_port
    from tests.harness.redis import ping, redis_binary

    port = free_port()
    proc = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            if ping("127.0.0.1", port):
                return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis did not start")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def script_calls(port: int) -> int:
    import redis

    stats = redis.Redis(port=port).info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("eval", "evalsha"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", choices=["noop", "memory", "redis"])
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--redis-url")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.redis_url, args.port_file))
        return 0

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis_proc, redis_port = start_redis(workdir)
        import redis as redis_client

        try:
            for kind in ("noop", "memory", "redis"):
                url = f"redis://127.0.0.1:{redis_port}/0" if kind == "redis" else None
                proc, port = start_server(kind, url, workdir)
                try:
                    for n in (1, 5):
                        redis_client.Redis(port=redis_port).config_resetstat()
                        cpu = cpu_seconds(proc.pid), cpu_seconds(redis_proc.pid)
                        r = asyncio.run(load(port, n, args.seconds, args.concurrency))
                        calls = r["requests"] + WARMUP
                        r["server_cpu_us"] = (cpu_seconds(proc.pid) - cpu[0]) / calls * 1e6
                        if kind == "redis":
                            r["redis_round_trips_per_request"] = script_calls(redis_port) / calls
                            r["redis_cpu_us"] = (cpu_seconds(redis_proc.pid) - cpu[1]) / calls * 1e6
                        results[f"{kind}/{n}"] = r
                finally:
                    proc.terminate()
                    proc.wait()
        finally:
            redis_proc.terminate()
            redis_proc.wait()

    print(f"cpus={os.cpu_count()} seconds={args.seconds} concurrency={args.concurrency}")
    print(
        f"{'case':<10} {'rps':>7} {'p50 ms':>7} {'p99 ms':>7} {'rps/(a)':>8} {'cpu us':>7} {'cpu (a)/x':>9} "
        f"{'redis RT/req':>12} {'redis cpu us':>12}"
    )
    for key, r in results.items():
        kind, n = key.split("/")
        base = results[f"noop/{n}"]
        ratio, capacity = r["rps"] / base["rps"], base["server_cpu_us"] / r["server_cpu_us"]
        trips = f"{r['redis_round_trips_per_request']:.3f}" if kind == "redis" else "-"
        rcpu = f"{r['redis_cpu_us']:.0f}" if kind == "redis" else "-"
        print(
            f"{key:<10} {r['rps']:>7.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {ratio:>8.2f} "
            f"{r['server_cpu_us']:>7.0f} {capacity:>9.2f} {trips:>12} {rcpu:>12}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
