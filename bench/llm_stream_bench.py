"""Streaming chat completions through the gateway vs straight to the backend, in the same run: time to
first token (TTFT) and total time per request, and their ratios. Not a test: run it by hand.

    python bench/llm_stream_bench.py [--requests 200] [--max-tokens 64] [--token-delay 0]
                                     [--first-token-delay S] [--concurrency 1]
                                     [--setups http,admit,http+admit] [--breakdown [each]]
                                     [--json out.json]

Starts, on 127.0.0.1 and free ports: the chat stand-in (examples/quickstart_models.py chat, vLLM's SSE
shapes; `--token-delay` seconds before each word, a model's decode step; `--first-token-delay` before
the first one instead, its prefill), `meshgate serve` and Envoy fed by its ADS, with the whole chain on:
ext_authz (API key, model from the body), ratelimit (a per-tenant token quota checked at request time,
charged at stream end), the LLM usage filters (the stream flag, `stream_options.include_usage` merged
into the request, sse_to_metadata reading the usage chunk, the Lua filter dropping it again).

Each request streams `--max-tokens` words (`ignore_eos: true`, as vLLM takes it) with `stream: true` and
no stream_options (so the gateway adds include_usage). The rows (direct, gateway, and with
`--breakdown` the gateway's own config with filters left out: bench/llm_bench_breakdown.py) are
interleaved, one request per row per round in an order that rotates (or `--concurrency` rounds in
flight), so a slow spell of the machine hits them all. TTFT: from sending the request to the first chunk
carrying content; total: to the end of the stream. Figures are medians and p90s in milliseconds; the
ratio is gateway / direct of the medians. Per row also: the CPU per request of its Envoy and meshgate
(less what they run when idle), its gRPC calls to meshgate, and meshgate's own time per call.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from llm_bench_breakdown import GAPS, cpu_ns, gaps, identity_headers, start_static  # noqa: E402

from meshgate.xds.bootstrap import envoy_bootstrap  # noqa: E402
from tests.harness.envoy import Envoy  # noqa: E402
from tests.harness.meshgate import Meshgate  # noqa: E402
from tests.harness.procs import Proc, free_port, wait_for_http, wait_until  # noqa: E402
from tests.harness.stack import Stack  # noqa: E402

MODEL = "zen-chat"
API_KEY = "bench-key"
_SETUPS = {"http": ("http", "ratelimit"), "admit": ("grpc", "extauthz"), "http+admit": ("http", "extauthz")}
"""`--setups` rows: (gateway.ext_authz.transport, gateway.ratelimit.admission); `gateway` is the default
(grpc, ratelimit)."""


def policy(
    gateway_port: int, backend_port: int, transport: str = "grpc", admission: str = "ratelimit"
) -> dict[str, Any]:
    return {
        "version": 1,
        "gateway": {"port": gateway_port, "ext_authz": {"transport": transport},
                    "ratelimit": {"admission": admission}},
        "api_keys": [{"id": "bench", "tenant": "acme", "roles": ["invoker"],
                      "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}],
        "tenants": [{"name": "acme", "quotas": ["tokens-per-day"]}],
        "roles": [{"name": "invoker", "models": ["*"]}],
        "models": [{"name": MODEL, "protocol": "openai",
                    "versions": [{"name": "v1", "endpoints": [f"127.0.0.1:{backend_port}"]}]}],
        "quotas": [{"name": "tokens-per-day", "per": "tenant", "unit": "tokens", "limit": 10**9,
                    "window": "day"}],
    }  # fmt: skip


class Backend:
    def __init__(self, workdir: Path, token_delay: float, first_token_delay: float | None = None) -> None:
        self.port = free_port()
        argv = [sys.executable, str(ROOT / "examples" / "quickstart_models.py"), "chat", "--model", MODEL,
                "--port", str(self.port), "--token-delay", str(token_delay)]  # fmt: skip
        if first_token_delay is not None:
            argv += ["--first-token-delay", str(first_token_delay)]
        self.proc = Proc("chat", argv, log_dir=workdir)

    def start(self) -> Backend:
        self.proc.start()
        wait_for_http(f"http://127.0.0.1:{self.port}/health", 20, proc=self.proc)
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        return self.proc.stop(timeout)


def stream_once(
    client: httpx.Client, url: str, max_tokens: int, n: int, headers: dict[str, str] | None = None
) -> tuple[float, float, int]:
    """(ttft, total) in seconds and the number of words streamed."""
    prompt = f"Bench question number {n}: is now better than never?"
    body = {"model": MODEL, "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    started = time.perf_counter()
    first: float | None = None
    words = 0
    with client.stream("POST", url, json=body, headers={"x-api-key": API_KEY, **(headers or {})}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or ():
                if choice.get("delta", {}).get("content"):
                    words += 1
                    if first is None:
                        first = time.perf_counter()
    end = time.perf_counter()
    return (first or end) - started, end - started, words


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Target:
    """One row: where its requests go, the headers they carry, and the processes whose CPU they cost.
    A request's CPU is what its Envoy and meshgate ran from its start to 2 ms after its end, less what
    they run when idle over that time (`idle`: ns of CPU per s, measured before the timed rounds)."""

    idle: dict[int, float] = {}

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, envoy: int | None = None,
                 meshgate: int | None = None, metrics: str = "") -> None:  # fmt: skip
        self.url, self.headers, self.envoy, self.meshgate = url, headers or {}, envoy, meshgate
        self.metrics = metrics  # its meshgate's /metrics
        self.rows: list[tuple[float, float, int]] = []
        self.cpu = {"envoy": 0, "meshgate": 0}

    def once(self, client: httpx.Client, max_tokens: int, n: int) -> None:
        pids = {"envoy": self.envoy, "meshgate": self.meshgate}
        before = {k: cpu_ns(pid) for k, pid in pids.items() if pid}
        started = time.perf_counter()
        self.rows.append(stream_once(client, self.url, max_tokens, n, self.headers))
        time.sleep(_SETTLE_S)  # the stream-end charge call is counted with its own request
        elapsed = time.perf_counter() - started
        for k, pid in pids.items():
            if pid:
                self.cpu[k] += cpu_ns(pid) - before[k] - int(Target.idle.get(pid, 0.0) * elapsed)


_SETTLE_S = 0.002


def idle_cpu(pids: set[int | None], seconds: float = 2.0) -> dict[int, float]:
    """ns of CPU per second each process runs with no request in flight (timers, stats, the xds loop)."""
    known = [pid for pid in pids if pid]
    before = {pid: cpu_ns(pid) for pid in known}
    time.sleep(seconds)
    return {pid: (cpu_ns(pid) - before[pid]) / seconds for pid in known}


def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    backend = stack.add(Backend(stack.workdir, args.token_delay, args.first_token_delay)).start()
    gateway_port = free_port()
    mg = stack.add(Meshgate(policy(gateway_port, backend.port), workdir=stack.workdir)).start()
    envoy = stack.add(Envoy(envoy_bootstrap("bench", xds=mg.address("xds")), workdir=stack.workdir,
                            log_level="warning")).start()  # fmt: skip
    path = "/v1/chat/completions"
    targets = {
        "direct": Target(f"http://127.0.0.1:{backend.port}{path}"),
        "gateway": Target(f"http://127.0.0.1:{gateway_port}{path}", envoy=envoy.proc.pid,
                          meshgate=mg.proc.pid, metrics=mg.metrics_url),
    }  # fmt: skip
    for row, (transport, admission) in _SETUPS.items():  # the same gateway, set up otherwise
        if row not in args.setups:
            continue
        port = free_port()
        doc = policy(port, backend.port, transport, admission)
        mg_row = stack.add(Meshgate(doc, workdir=stack.workdir)).start()
        bootstrap = envoy_bootstrap(f"bench-{transport}-{admission}", xds=mg_row.address("xds"))
        envoy_row = stack.add(Envoy(bootstrap, workdir=stack.workdir, log_level="warning")).start()
        targets[row] = Target(f"http://127.0.0.1:{port}{path}", envoy=envoy_row.proc.pid,
                              meshgate=mg_row.proc.pid, metrics=mg_row.metrics_url)  # fmt: skip
    log = stack.workdir / "variants.log"
    if args.breakdown:
        static, kept = start_static(envoy, stack.workdir, log, each=args.breakdown == "each")
        stack.add(static).start()
        for name, filters in kept.items():
            targets[name] = Target(f"http://127.0.0.1:{static.listener_port(name)}{path}",
                                   headers=identity_headers(filters, "acme", MODEL),
                                   envoy=static.proc.pid, meshgate=mg.proc.pid,
                                   metrics=mg.metrics_url)  # fmt: skip
    names = list(targets)
    limits = httpx.Limits(max_connections=2 * len(names) * args.concurrency)
    with httpx.Client(timeout=60, trust_env=False, limits=limits) as client:
        for target in targets.values():  # warm-up: connections, extauthz's key cache, Envoy's route
            for i in range(5):
                stream_once(client, target.url, args.max_tokens, -i, target.headers)
        wait_until(lambda: envoy.stat("http.gateway.rq_total") >= 5, 10, what="warm-up seen by Envoy")
        calls = _calls_per_request(client, targets, args.max_tokens)
        Target.idle = idle_cpu({t.envoy for t in targets.values()} | {t.meshgate for t in targets.values()})

        def round_(n: int) -> None:  # every row once, in an order that rotates
            for name in names[n % len(names) :] + names[: n % len(names)]:
                targets[name].once(client, args.max_tokens, n)

        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(round_, range(args.requests)))
        checks = _service_latency(mg.metrics_url)
    report: dict[str, Any] = {"requests": args.requests, "max_tokens": args.max_tokens,
                              "token_delay_s": args.token_delay,
                              "first_token_delay_s": args.first_token_delay,
                              "concurrency": args.concurrency, "loadavg": _loadavg(),
                              "rows": {}, "service_latency_us": checks,
                              "idle_cpu_us_per_s": {str(k): v / 1e3 for k, v in Target.idle.items()},
                              }  # fmt: skip
    for name, target in targets.items():
        ttft = [r[0] * 1000 for r in target.rows]
        total = [r[1] * 1000 for r in target.rows]
        report["rows"][name] = {
            "ttft_ms_p50": statistics.median(ttft), "ttft_ms_p90": pct(ttft, 0.9),
            "total_ms_p50": statistics.median(total), "total_ms_p90": pct(total, 0.9),
            "words_p50": statistics.median(r[2] for r in target.rows),
            "envoy_cpu_us": target.cpu["envoy"] / 1000 / len(target.rows),
            "meshgate_cpu_us": target.cpu["meshgate"] / 1000 / len(target.rows),
            "meshgate_calls": calls.get(name),
        }  # fmt: skip
    rows = report["rows"]
    report["ratio_ttft_p50"] = rows["gateway"]["ttft_ms_p50"] / rows["direct"]["ttft_ms_p50"]
    report["ratio_total_p50"] = rows["gateway"]["total_ms_p50"] / rows["direct"]["total_ms_p50"]
    report["ratios"] = {
        row: (rows[row]["ttft_ms_p50"] / rows["direct"]["ttft_ms_p50"],
              rows[row]["total_ms_p50"] / rows["direct"]["total_ms_p50"])
        for row in rows if row in _SETUPS
    }  # fmt: skip
    report["charged_at_stream_end"] = envoy.stat("cluster.meshgate|ratelimit.upstream_rq_total")
    if args.breakdown:
        stack.close()  # the static Envoy writes its access log out as it stops
        report["envoy_gaps_us"] = gaps(log)
        usage = (rows["static all"], rows["-LLM filters"])
        report["usage_step_cpu_us"] = {
            k: usage[0][f"{k}_cpu_us"] - usage[1][f"{k}_cpu_us"] for k in ("envoy", "meshgate")
        }
    return report


def _calls_per_request(client: httpx.Client, targets: dict[str, Target], max_tokens: int) -> dict[str, str]:
    """Per row, the gRPC calls one request makes to meshgate ("extauthz+ratelimit"), from meshgate's own
    counters (one request at a time, before the timed rounds)."""
    out = {}
    for name, target in targets.items():
        if target.meshgate is None:
            continue
        before = _service_counts(target.metrics)
        stream_once(client, target.url, max_tokens, 0, target.headers)
        time.sleep(0.2)  # the stream-end call
        after = _service_counts(target.metrics)
        out[name] = "+".join(f"{after[k] - before[k]:g}" for k in ("extauthz", "ratelimit"))
    return out


def _service_counts(metrics_url: str) -> dict[str, float]:
    samples = _metrics(metrics_url)
    return {
        "extauthz": sum(v for (n, _), v in samples.items() if n == "meshgate_extauthz_check_seconds_count"),
        "ratelimit": samples.get(("meshgate_ratelimit_should_rate_limit_seconds_count", ""), 0.0),
    }


def _metrics(url: str) -> dict[tuple[str, str], float]:
    """Prometheus text -> {(name, labels): value}."""
    out = {}
    for line in httpx.get(url, trust_env=False).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            name, _, labels = key.partition("{")
            out[(name, labels.rstrip("}"))] = float(value)
    return out


def _service_latency(url: str) -> dict[str, float]:
    """Mean µs per call as meshgate's own histograms saw it (the servicer's time, not the gRPC stack's):
    extauthz Check; ratelimit ShouldRateLimit (the admission check and the stream-end charge)."""
    samples = _metrics(url)

    def mean(name: str) -> float:
        count = sum(v for (n, _), v in samples.items() if n == f"{name}_count")
        total = sum(v for (n, _), v in samples.items() if n == f"{name}_sum")
        return total / count * 1e6 if count else float("nan")

    return {"extauthz_check": mean("meshgate_extauthz_check_seconds"),
            "ratelimit_should_rate_limit": mean("meshgate_ratelimit_should_rate_limit_seconds")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="requests per path (default 200)")
    parser.add_argument("--max-tokens", type=int, default=64, help="words streamed per request (default 64)")
    parser.add_argument("--token-delay", type=float, default=0.0, help="backend seconds per word (default 0)")
    parser.add_argument("--concurrency", type=int, default=1, help="pairs of requests in flight (default 1)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--first-token-delay",
        type=float,
        default=None,
        help="backend seconds before the first word, its prefill (default: --token-delay)",
    )
    parser.add_argument(
        "--setups",
        default="",
        help="also these rows, comma-separated, each a meshgate + Envoy of its own: "
        + ", ".join(f"`{row}` ({t} transport, admission by {a})" for row, (t, a) in _SETUPS.items()),
    )
    parser.add_argument(
        "--breakdown",
        nargs="?",
        const="groups",
        choices=("groups", "each"),
        help="also rows of the gateway's own config with filters left out: ext_authz, ratelimit, "
        "the LLM filters (groups), and each LLM filter alone too (each); "
        "bench/llm_bench_breakdown.py",
    )
    args = parser.parse_args()
    args.setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if unknown := set(args.setups) - set(_SETUPS):
        parser.error(f"--setups: unknown {sorted(unknown)}; known: {', '.join(_SETUPS)}")
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            report = run(args, stack)
        finally:
            stack.close()
    print_report(args, report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def print_report(args: argparse.Namespace, report: dict[str, Any]) -> None:
    first = args.token_delay if args.first_token_delay is None else args.first_token_delay
    print(
        f"{args.requests} streams per row, {args.max_tokens} words each, "
        f"first token after {first * 1000:g} ms, then {args.token_delay * 1000:g} ms per token, "
        f"concurrency {args.concurrency}; "
        f"loadavg {report['loadavg']}"
    )
    print(
        f"{'row':14} {'TTFT p50':>9} {'TTFT p90':>9} {'total p50':>10} {'total p90':>10} {'words':>6} "
        f"{'Envoy CPU':>10} {'meshgate CPU':>13} {'calls':>6}"
    )
    for name, r in report["rows"].items():
        print(
            f"{name:14} {r['ttft_ms_p50']:8.2f}ms {r['ttft_ms_p90']:8.2f}ms {r['total_ms_p50']:9.2f}ms "
            f"{r['total_ms_p90']:9.2f}ms {r['words_p50']:6g} {r['envoy_cpu_us']:8.0f}us "
            f"{r['meshgate_cpu_us']:11.0f}us {r['meshgate_calls'] or '-':>6}"
        )
    print(
        f"gateway/direct: TTFT x{report['ratio_ttft_p50']:.3f}, total x{report['ratio_total_p50']:.3f} "
        f"(medians); ratelimit calls seen by Envoy: {report['charged_at_stream_end']:g}"
    )
    for row, (ttft, total) in report["ratios"].items():
        print(f"{row}/direct: TTFT x{ttft:.3f}, total x{total:.3f} (medians)")
    lat = report["service_latency_us"]
    print(
        f"meshgate's own time per call (mean): extauthz Check {lat['extauthz_check']:.0f}us, "
        f"ratelimit ShouldRateLimit {lat['ratelimit_should_rate_limit']:.0f}us"
    )
    if "envoy_gaps_us" in report:
        print("Envoy's time points, medians in us (access log of the static rows):")
        print(f"{'row':14} " + " ".join(f"{g:>9}" for g in GAPS))
        for name, row in report["envoy_gaps_us"].items():
            print(f"{name:13} " + " ".join(f"{row[g]:9.0f}" for g in GAPS))
        usage = report["usage_step_cpu_us"]
        print(
            f"usage step (the LLM filters and the stream-end charge) CPU per request: Envoy "
            f"{usage['envoy']:.0f}us, meshgate {usage['meshgate']:.0f}us"
        )


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
