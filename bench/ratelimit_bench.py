"""ShouldRateLimit side by side: (a) a no-op grpc.aio RLS server, (b) meshgate with the memory store,
(c) meshgate with Redis; 1 and 5 descriptors per request. Not a test: run it by hand.

    python bench/ratelimit_bench.py [--seconds 5] [--rounds 5] [--concurrency 16] [--compare DIR] [--probes]
                                    [--pipeline-window MS]
    python bench/ratelimit_bench.py --callgrind [--calls 3000] [--compare DIR]

Each server runs in its own process (`--serve KIND`), all started up front; this process is the client
(grpc.aio, a fixed number of calls in flight). The cases run in interleaved rounds (round 1 of every
case, then round 2, ...) so that a burst of load from other jobs hits them alike; each figure is the
median over the rounds, and each ratio to the no-op is the median of the per-round ratios (the no-op
and the case ran back to back in each round), with their min-max. `--compare DIR` adds (b) and
(c) run from the meshgate package in DIR (say, a copy of the previous version): before and after, side
by side in one run. `--pipeline-window MS` adds (c) with `store_pipeline_window` set to MS milliseconds
(case redis+window). `--probes` adds servers that answer with meshgate's kept answers plus one part of
the work each (see Probe): what each part costs under load, where a tight loop misleads.
`--callgrind` counts instead, with valgrind, the instructions per call of each servicer alone (no
gRPC transport, same process, a fixed number of calls): a deterministic figure where the load's
numbers are at the mercy of other jobs. The load prints requests/s, p50 and p99 latency, the ratios
(b)/(a) and (c)/(a) of requests/s and of server CPU time per request (steadier than requests/s on a
shared machine; "sys us" is the kernel's part of it), the server's context switches per request
(every thread: "ctx/req"), Redis round trips per request counted by Redis itself (INFO commandstats:
eval + evalsha calls divided by requests; the commands the script runs inside Redis are not round
trips), Redis's CPU and its read system calls per request ("redis rd/req": below 1 when one read
brings a batch of commands). The Redis store timeout is raised to 1 s (BENCH_REDIS_TIMEOUT) so that
a saturated server measures throughput rather than its 50 ms timeout. meshgate runs with the
policy's default settings, X-RateLimit-* headers in every response included; `--response-headers
none` leaves them out (envoyproxy/ratelimit's default). Every server, the no-op included, runs on
the event loop `meshgate serve` would pick (`--event-loop`, default auto: uvloop when installed), so
the ratios compare servicers, not loops.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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


class Probe:
    """`--probes`: meshgate's answer, kept per request bytes after a first real call, plus one part of
    the real work: `cached` nothing (the framework with meshgate's response bytes), `decide` the
    limiter's decision (memory store), `answer` filling the kept response, `redis-ping` one PING round
    trip to Redis (`RedisStore.ping`). Where a servicer's cost under load goes, part by part."""

    def __init__(self, part: str, redis_url: str | None) -> None:
        self.part = part
        self.servicer = make_servicer("redis" if part == "redis-ping" else "memory", redis_url)
        self.kept: dict[bytes, tuple[bytes, Any, Any]] = {}

    async def should_rate_limit(self, raw: bytes, context: Any) -> bytes:
        servicer = self.servicer
        found = self.kept.get(raw)
        if found is None:
            answer = await servicer.should_rate_limit(raw, context)
            entry = servicer._entry(raw)
            found = self.kept[raw] = (answer, entry, await servicer.limiter.decide(entry.request))
        answer, entry, decision = found
        if self.part == "decide":
            await servicer.limiter.decide(entry.request)
        elif self.part == "answer":
            return bytes(servicer._replies.answer(entry, decision))
        elif self.part == "redis-ping":
            await servicer.limiter.store.ping()
        return answer


PROBES = ["probe-cached", "probe-decide", "probe-answer", "probe-redis-ping"]


def pipeline() -> dict[str, float]:
    """RedisStore's pipeline window, for the server of `--pipeline-window` (BENCH_PIPELINE_WINDOW)."""
    window = float(os.environ.get("BENCH_PIPELINE_WINDOW", "0"))
    return {"pipeline_window": window} if window else {}


def make_servicer(kind: str, redis_url: str | None) -> Any:
    if kind == "noop":
        return NoOp()
    if kind.startswith("probe-"):
        return Probe(kind.removeprefix("probe-"), redis_url)
    from prometheus_client import CollectorRegistry

    from meshgate.policy.model import Policy
    from meshgate.ratelimit import Limiter, MemoryStore, RateLimitServicer, Settings, compile_policy
    from meshgate.ratelimit.metrics import RateLimitMetrics
    from meshgate.ratelimit.model import RateLimitConfig
    from meshgate.ratelimit.redis_store import RedisStore

    domain, tree = compile_policy(Policy.model_validate(POLICY, strict=False))
    store: Any = (
        RedisStore(redis_url, timeout=float(os.environ.get("BENCH_REDIS_TIMEOUT", "1")), **pipeline())
        if kind == "redis" and redis_url
        else MemoryStore()
    )
    metrics = RateLimitMetrics(CollectorRegistry())
    limiter = Limiter(
        store,
        config=RateLimitConfig({domain: tree}),
        settings=Settings(response_headers=os.environ.get("BENCH_RESPONSE_HEADERS", "x-ratelimit")),  # type: ignore[arg-type]
        metrics=metrics,
    )
    return RateLimitServicer(limiter, metrics, kind)


def add_servicer(servicer: Any, server: grpc.aio.Server) -> None:
    """As meshgate's RateLimitService registers it (serialized messages in and out) where the meshgate
    being run has `add_to_server`; else (the no-op, or an older meshgate) the generated registration."""
    try:
        from meshgate.ratelimit.service import add_to_server
    except ImportError:
        add_to_server = None
    if isinstance(servicer, NoOp) or add_to_server is None:
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)
    else:
        add_to_server(servicer, server)


def event_loop(name: str) -> Any:
    """The loop factory `meshgate serve --event-loop NAME` uses (an older meshgate: the same choice)."""
    try:
        from meshgate.server import loop_factory
    except ImportError:
        if name == "asyncio":
            return None
        try:
            import uvloop
        except ImportError:
            return None
        return uvloop.new_event_loop
    return loop_factory(name)


async def serve(kind: str, redis_url: str | None, port_file: Path) -> None:
    server = grpc.aio.server()
    add_servicer(make_servicer(kind, redis_url), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    if os.environ.get("BENCH_GC_FREEZE", "1") == "1":
        gc.freeze()  # as meshgate's server does once started (meshgate/server.py)
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


def start_server(
    kind: str, redis_url: str | None, workdir: Path, *, source: Path | None = None, name: str = "",
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """A server process; with `source`, meshgate is imported from that directory (PYTHONPATH)."""
    port_file = workdir / f"{name or kind}.port"
    argv = [sys.executable, __file__, "--serve", kind, "--port-file", str(port_file)]
    if redis_url:
        argv += ["--redis-url", redis_url]
    env = dict(os.environ, **(extra_env or {}))
    if source is not None:
        env["PYTHONPATH"] = str(source)
    proc = subprocess.Popen(argv, cwd=ROOT, env=env)
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


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, from /proc (Linux): user and kernel CPU seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of a process, from /proc (Linux)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        total += sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
    return total


def read_calls(pid: int) -> int:
    """read()-like system calls a process made (/proc/<pid>/io syscr, Linux)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"])


def script_calls(port: int) -> int:
    import redis

    stats = redis.Redis(port=port).info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("eval", "evalsha"))


def measure(
    server: subprocess.Popen[bytes], port: int, redis_proc: subprocess.Popen[bytes], redis_port: int,
    *, kind: str, descriptors: int, seconds: float, concurrency: int,
) -> dict[str, Any]:
    """One round of one case: the load, plus the CPU the server (and Redis) spent on it."""
    import redis as redis_client

    redis_client.Redis(port=redis_port).config_resetstat()
    (user, system), redis_cpu = cpu_seconds(server.pid), sum(cpu_seconds(redis_proc.pid))
    switches, redis_reads = context_switches(server.pid), read_calls(redis_proc.pid)
    r: dict[str, Any] = asyncio.run(load(port, descriptors, seconds, concurrency))
    calls = r["requests"] + WARMUP
    user_after, system_after = cpu_seconds(server.pid)
    r["server_switches"] = (context_switches(server.pid) - switches) / calls
    r["server_cpu_us"] = (user_after + system_after - user - system) / calls * 1e6
    r["server_sys_us"] = (system_after - system) / calls * 1e6  # the kernel's share: sockets, wakeups
    if kind == "redis":
        r["redis_round_trips_per_request"] = script_calls(redis_port) / calls
        r["redis_cpu_us"] = (sum(cpu_seconds(redis_proc.pid)) - redis_cpu) / calls * 1e6
        # reads Redis made per request: below 1 when one read brings several commands (a batch)
        r["redis_reads_per_request"] = (read_calls(redis_proc.pid) - redis_reads) / calls
    return r


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of one case (the rounds of all cases were interleaved)."""
    out: dict[str, Any] = {"rounds": rounds}
    for field in rounds[0]:
        out[field] = statistics.median(r[field] for r in rounds)
    cpus = [r["server_cpu_us"] for r in rounds]
    out["server_cpu_us_min"], out["server_cpu_us_max"] = min(cpus), max(cpus)
    return out


def paired(r: dict[str, Any], base: dict[str, Any], field: str, invert: bool = False) -> list[float]:
    """Per round, the case's `field` over the no-op's in the same round (they ran back to back): a
    slow spell of the machine hits both sides of each ratio."""
    pairs = zip(r["rounds"], base["rounds"], strict=True)
    return sorted((b[field] / x[field]) if invert else (x[field] / b[field]) for x, b in pairs)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    width = max(14, *(len(key) for key in results))
    print(
        f"{'case':<{width}} {'rps':>7} {'p50 ms':>7} {'p99 ms':>7} {'rps/(a)':>8} {'(min-max)':>11} "
        f"{'cpu us':>7} {'sys us':>6} {'ctx/req':>7} {'cpu (a)/x':>9} {'redis RT/req':>12} "
        f"{'redis cpu us':>12} {'redis rd/req':>12}"
    )
    for key, r in results.items():
        base = results[f"noop/{key.split('/')[1]}"]
        ratios = paired(r, base, "rps")
        capacity = statistics.median(paired(r, base, "server_cpu_us", invert=True))
        spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
        trips = f"{r['redis_round_trips_per_request']:.3f}" if "redis_cpu_us" in r else "-"
        rcpu = f"{r['redis_cpu_us']:.0f}" if "redis_cpu_us" in r else "-"
        reads = f"{r['redis_reads_per_request']:.2f}" if "redis_cpu_us" in r else "-"
        ratio = statistics.median(ratios)
        print(
            f"{key:<{width}} {r['rps']:>7.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {ratio:>8.2f} "
            f"{spread:>11} {r['server_cpu_us']:>7.0f} {r['server_sys_us']:>6.0f} "
            f"{r['server_switches']:>7.1f} {capacity:>9.2f} {trips:>12} {rcpu:>12} {reads:>12}"
        )


# --- servicer only, in one process: a deterministic count of instructions per call ------------------------
async def call_servicer(kind: str, redis_url: str | None, descriptors: int, calls: int) -> None:
    """`calls` ShouldRateLimit calls straight to the servicer (no gRPC transport), after one warm-up pass
    over the 200 requests; Redis with 16 calls in flight, like the load client."""
    servicer = make_servicer(kind, redis_url)
    requests = make_requests(descriptors)
    if hasattr(servicer, "should_rate_limit"):  # serialized in and out, as add_to_server registers it
        raw = [r.SerializeToString() for r in requests]

        async def call(i: int) -> bytes:
            return bytes(await servicer.should_rate_limit(raw[i % len(raw)], None))
    else:  # the no-op, an older meshgate: messages, serialized here as grpc would

        async def call(i: int) -> bytes:
            response = await servicer.ShouldRateLimit(requests[i % len(requests)], None)
            return bytes(response.SerializeToString())

    for i in range(len(requests)):
        await call(i)
    concurrency = 16 if kind == "redis" else 1

    async def worker(offset: int) -> None:
        for i in range(offset, calls, concurrency):
            await call(i)

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    if kind != "noop":
        await servicer.limiter.store.close()


def instructions(kind: str, descriptors: int, calls: int, redis_url: str | None, source: Path | None) -> int:
    """Instructions valgrind's callgrind counts in a `--inproc` child: the whole process."""
    argv = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--inproc", kind, "--descriptors", str(descriptors), "--calls", str(calls),
    ]  # fmt: skip
    if redis_url:
        argv += ["--redis-url", redis_url]
    # a fixed hash seed: str hashes move dict probes, and so the count, from one run to the next
    env = dict(os.environ, PYTHONHASHSEED="0")
    if source is not None:
        env["PYTHONPATH"] = str(source)
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return int(done.stderr.rsplit("Collected : ", 1)[1].split()[0])


def callgrind(cases: list[tuple[str, str, Path | None]], redis_url: str, calls: int) -> dict[str, float]:
    """Instructions per call: (run with `calls` calls - run with none) / calls, for every case and 1 and 5
    descriptors; valgrind runs in parallel, one per CPU."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = {
        (f"{name}/{n}", c): (kind, n, c, redis_url if kind == "redis" else None, source)
        for name, kind, source in cases for n in (1, 5) for c in (0, calls)
    }  # fmt: skip
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: instructions(*job), jobs.values()), strict=True))
    keys = [f"{name}/{n}" for n in (1, 5) for name, _, _ in cases]
    return {key: (counts[(key, calls)] - counts[(key, 0)]) / calls for key in keys}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", choices=["noop", "memory", "redis", *PROBES])
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--redis-url")
    parser.add_argument("--seconds", type=float, default=5.0, help="per case, split over the rounds")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every case")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--compare", type=Path, metavar="DIR",
        help="also run (b) and (c) with the meshgate package found in DIR (e.g. a copy of the previous "
        "version), as cases memory@base and redis@base",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--probes", action="store_true",
        help="also run servers that answer with meshgate's kept answers plus one part of the work "
        "(cached, decide, answer, redis-ping): where the cost under load goes",
    )
    parser.add_argument(
        "--callgrind", action="store_true",
        help="instead of the load: instructions per ShouldRateLimit call of the servicer alone, in one "
        "process, counted by valgrind (repeatable on a busy machine)",
    )
    parser.add_argument("--calls", type=int, default=3000, help="calls per --callgrind run")
    parser.add_argument(
        "--event-loop", choices=["auto", "uvloop", "asyncio"], default="auto",
        help="the event loop of every server, the no-op's too (default auto, as meshgate serve: uvloop "
        "when installed)",
    )
    parser.add_argument(
        "--response-headers", choices=["none", "x-ratelimit", "draft-03"], default="x-ratelimit",
        help="meshgate's gateway.ratelimit.response_headers (default x-ratelimit, the policy's default: "
        "three headers in every response; none: envoyproxy/ratelimit's default)",
    )
    parser.add_argument(
        "--pipeline-window", type=float, default=0.0, metavar="MS",
        help="also run (c) with gateway.ratelimit.store_pipeline_window set to MS milliseconds, as case "
        "redis+window (the load only)",
    )
    parser.add_argument("--inproc", choices=["noop", "memory", "redis"], help=argparse.SUPPRESS)
    parser.add_argument("--descriptors", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("BENCH_RESPONSE_HEADERS", args.response_headers)  # the server children read it
    os.environ.setdefault("BENCH_EVENT_LOOP", args.event_loop)
    if args.serve:
        with asyncio.Runner(loop_factory=event_loop(os.environ["BENCH_EVENT_LOOP"])) as runner:
            runner.run(serve(args.serve, args.redis_url, args.port_file))
        return 0
    if args.inproc:
        asyncio.run(call_servicer(args.inproc, args.redis_url, args.descriptors, args.calls))
        return 0

    rounds: dict[str, list[dict[str, Any]]] = {}
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis_proc, redis_port = start_redis(workdir)
        url = f"redis://127.0.0.1:{redis_port}/0"
        cases: list[tuple[str, str, Path | None]] = [
            ("noop", "noop", None), ("memory", "memory", None), ("redis", "redis", None),
        ]
        if args.compare:
            cases[2:2] = [("memory@base", "memory", args.compare)]
            cases.append(("redis@base", "redis", args.compare))
        if args.probes:
            cases += [(kind, kind, None) for kind in PROBES]
        if args.callgrind:
            try:
                per_call = callgrind(cases, url, args.calls)
            finally:
                redis_proc.terminate()
                redis_proc.wait()
            print(f"instructions per ShouldRateLimit call, servicer only (callgrind, {args.calls} calls)")
            for key, count in per_call.items():
                extra = count - per_call[f"noop/{key.split('/')[1]}"]
                print(f"{key:<14} {count:>9.0f}   beyond the no-op servicer {extra:>9.0f}")
            if args.json:
                args.json.write_text(json.dumps(per_call, indent=2))
            return 0
        envs: dict[str, dict[str, str]] = {}
        if args.pipeline_window:
            cases.append(("redis+window", "redis", None))
            envs["redis+window"] = {"BENCH_PIPELINE_WINDOW": str(args.pipeline_window / 1000)}
        try:
            for name, kind, source in cases:
                servers[name] = start_server(
                    kind, url if "redis" in kind else None, workdir, source=source, name=name,
                    extra_env=envs.get(name),
                )
            for _ in range(args.rounds):
                for n in (1, 5):
                    for name, kind, _source in cases:
                        proc, port = servers[name]
                        r = measure(
                            proc, port, redis_proc, redis_port, kind=kind, descriptors=n,
                            seconds=args.seconds / args.rounds, concurrency=args.concurrency,
                        )
                        rounds.setdefault(f"{name}/{n}", []).append(r)
        finally:
            for proc, _port in servers.values():
                proc.terminate()
                proc.wait()
            redis_proc.terminate()
            redis_proc.wait()

    results = {key: summarize(rs) for key, rs in sorted(rounds.items(), key=lambda kv: kv[0].split("/")[1])}
    print(
        f"cpus={os.cpu_count()} seconds={args.seconds} rounds={args.rounds} concurrency={args.concurrency} "
        f"response_headers={args.response_headers} event_loop={args.event_loop} "
        f"loadavg={os.getloadavg()[0]:.2f}"
    )
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
