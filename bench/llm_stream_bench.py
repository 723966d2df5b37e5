"""Streaming chat completions through the gateway vs straight to the backend, in the same run: time to
first token (TTFT) and total time per request, and their ratios. Not a test: run it by hand.

    python bench/llm_stream_bench.py [--requests 200] [--max-tokens 64] [--token-delay 0]
                                     [--concurrency 1] [--json out.json]

Starts, on 127.0.0.1 and free ports: the chat stand-in (examples/quickstart_models.py chat, vLLM's SSE
shapes; `--token-delay` seconds before each word, a model's decode step), `meshgate serve` and Envoy fed
by its ADS, with the whole chain on: ext_authz (API key, model from the body), ratelimit (a per-tenant
token quota checked at request time, charged at stream end), the LLM usage filters (the stream flag,
`stream_options.include_usage` merged into the request, sse_to_metadata reading the usage chunk).

Each request streams `--max-tokens` words (`ignore_eos: true`, as vLLM takes it) with `stream: true` and
no stream_options (so the gateway
adds include_usage, and its answer has one chunk more than the direct one). Direct and gateway requests
alternate, one pair at a time (or `--concurrency` pairs in flight), so a slow spell of the machine hits
both. TTFT: from sending the request to the first chunk carrying content; total: to the end of the
stream. Figures are medians and p90s in milliseconds; the ratio is gateway / direct of the medians.
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

from meshgate.xds.bootstrap import envoy_bootstrap  # noqa: E402
from tests.harness.envoy import Envoy  # noqa: E402
from tests.harness.meshgate import Meshgate  # noqa: E402
from tests.harness.procs import Proc, free_port, wait_for_http, wait_until  # noqa: E402
from tests.harness.stack import Stack  # noqa: E402

MODEL = "zen-chat"
API_KEY = "bench-key"


def policy(gateway_port: int, backend_port: int) -> dict[str, Any]:
    return {
        "version": 1,
        "gateway": {"port": gateway_port},
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
    def __init__(self, workdir: Path, token_delay: float) -> None:
        self.port = free_port()
        argv = [sys.executable, ROOT / "examples" / "quickstart_models.py", "chat", "--model", MODEL,
                "--port", self.port, "--token-delay", token_delay]  # fmt: skip
        self.proc = Proc("chat", argv, log_dir=workdir)

    def start(self) -> Backend:
        self.proc.start()
        wait_for_http(f"http://127.0.0.1:{self.port}/health", 20, proc=self.proc)
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        return self.proc.stop(timeout)


def stream_once(client: httpx.Client, url: str, max_tokens: int, n: int) -> tuple[float, float, int]:
    """(ttft, total) in seconds and the number of words streamed."""
    prompt = f"Bench question number {n}: is now better than never?"
    body = {"model": MODEL, "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    started = time.perf_counter()
    first: float | None = None
    words = 0
    with client.stream("POST", url, json=body, headers={"x-api-key": API_KEY}) as response:
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


def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    backend = stack.add(Backend(stack.workdir, args.token_delay)).start()
    gateway_port = free_port()
    mg = stack.add(Meshgate(policy(gateway_port, backend.port), workdir=stack.workdir)).start()
    envoy = stack.add(Envoy(envoy_bootstrap("bench", xds=mg.address("xds")), workdir=stack.workdir,
                            log_level="warning")).start()  # fmt: skip
    urls = {"direct": f"http://127.0.0.1:{backend.port}/v1/chat/completions",
            "gateway": f"http://127.0.0.1:{gateway_port}/v1/chat/completions"}  # fmt: skip
    results: dict[str, list[tuple[float, float, int]]] = {"direct": [], "gateway": []}
    pool = 2 * args.concurrency
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    with httpx.Client(timeout=60, trust_env=False, limits=limits) as client:
        for url in urls.values():  # warm-up: connections, extauthz's key cache, Envoy's route
            for i in range(5):
                stream_once(client, url, args.max_tokens, -i)
        wait_until(lambda: envoy.stat("http.gateway.rq_total") >= 5, 10, what="warm-up seen by Envoy")

        def pair(n: int) -> None:
            for path in ("direct", "gateway") if n % 2 else ("gateway", "direct"):
                results[path].append(stream_once(client, urls[path], args.max_tokens, n))

        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(pair, range(args.requests)))
    report: dict[str, Any] = {"requests": args.requests, "max_tokens": args.max_tokens,
                              "token_delay_s": args.token_delay, "concurrency": args.concurrency}  # fmt: skip
    for path, rows in results.items():
        ttft = [r[0] * 1000 for r in rows]
        total = [r[1] * 1000 for r in rows]
        report[path] = {
            "ttft_ms_p50": statistics.median(ttft), "ttft_ms_p90": pct(ttft, 0.9),
            "total_ms_p50": statistics.median(total), "total_ms_p90": pct(total, 0.9),
            "words_p50": statistics.median(r[2] for r in rows),
        }  # fmt: skip
    report["ratio_ttft_p50"] = report["gateway"]["ttft_ms_p50"] / report["direct"]["ttft_ms_p50"]
    report["ratio_total_p50"] = report["gateway"]["total_ms_p50"] / report["direct"]["total_ms_p50"]
    report["charged_at_stream_end"] = envoy.stat("cluster.meshgate|ratelimit.upstream_rq_total")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="requests per path (default 200)")
    parser.add_argument("--max-tokens", type=int, default=64, help="words streamed per request (default 64)")
    parser.add_argument("--token-delay", type=float, default=0.0, help="backend seconds per word (default 0)")
    parser.add_argument("--concurrency", type=int, default=1, help="pairs of requests in flight (default 1)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            report = run(args, stack)
        finally:
            stack.close()
    print(f"{args.requests} streams per path, {args.max_tokens} words each, "
          f"token delay {args.token_delay * 1000:g} ms, concurrency {args.concurrency}")  # fmt: skip
    print(f"{'path':8} {'TTFT p50':>9} {'TTFT p90':>9} {'total p50':>10} {'total p90':>10} {'words':>6}")
    for path in ("direct", "gateway"):
        r = report[path]
        print(f"{path:8} {r['ttft_ms_p50']:8.2f}ms {r['ttft_ms_p90']:8.2f}ms {r['total_ms_p50']:9.2f}ms "
              f"{r['total_ms_p90']:9.2f}ms {r['words_p50']:6g}")  # fmt: skip
    print(f"gateway/direct: TTFT x{report['ratio_ttft_p50']:.2f}, total x{report['ratio_total_p50']:.2f} "
          f"(medians); ratelimit calls seen by Envoy: {report['charged_at_stream_end']:g}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
