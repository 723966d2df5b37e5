"""How much a policy reload adds to the latency of Check calls in flight while it runs.

    python bench/reload_stall.py [--models 1000] [--rounds 10] [--concurrency 4] [--baseline 2]

Starts `meshgate serve` (asyncio's or uvloop's event loop, --event-loop) on a policy of N models x 3
versions (canary weights, a shadow, an A/B route; probes off), keeps `--concurrency` extauthz Check calls
in flight from this process (a cached API-key allow, the common case), and alternates two windows per
round, side by side in the same run:

- baseline: `--baseline` seconds with no reload;
- reload: the policy file is replaced atomically (one canary weight changed, so every compiler runs on
  the whole policy) and meshgate gets SIGHUP (`--reload-settle 0`, so the window is the parse + compile
  + swap, not the settle wait); the window ends when meshgate logs the new generation.

It prints p50 / p99 / max of the Check calls that started in the baseline windows, and of the calls in
flight at any moment of a reload window (started before it ended and finished after it began), the
reload windows' durations, and p99(reload) - p99(baseline). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "demo-key-acme-ci"
API_KEY_SHA256 = "5a451159f3cbcfcb1199202a0aadc0e6760ebd0bacb904f743aab904ff513632"
LIVE = re.compile(r"policy generation (\d+) live")


def make_policy(models: int, canary: int) -> dict[str, Any]:
    docs = []
    for i in range(models):
        base = 10_000 + (3 * i) % 50_000
        net = f"10.{i // 250 % 250}.{i % 250}"
        weights = (100 - canary, canary) if i == 0 else (90, 10)
        docs.append({
            "name": f"model-{i}",
            "versions": [
                {"name": "v1", "weight": weights[0], "endpoints": [f"{net}.1:{base}"]},
                {"name": "v2", "weight": weights[1], "endpoints": [f"{net}.2:{base + 1}"]},
                {"name": "v3", "weight": 0, "endpoints": [f"{net}.3:{base + 2}"]},
            ],
            "shadow": {"version": "v3", "percent": 5},
            "ab": [{"header": "x-experiment", "value": "b", "version": "v2"}],
            "health_check": {"enabled": False},
        })
    return {
        "api_keys": [{"id": "bench", "tenant": "acme", "roles": ["invoker"], "sha256": API_KEY_SHA256}],
        "tenants": [{"name": "acme", "quotas": ["user-rps"]}],
        "roles": [{"name": "invoker", "models": ["*"]}],
        "quotas": [{"name": "user-rps", "per": ["tenant", "user"], "limit": 1000, "window": "second"}],
        "models": docs,
    }


def check_request() -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "POST", "/v2/models/model-7/infer", "gateway"
    http.headers["x-api-key"] = API_KEY
    return request


class Server:
    def __init__(self, workdir: Path, policy: Path, event_loop: str) -> None:
        self.log_path = workdir / "meshgate.log"
        ready = workdir / "ready.json"
        argv = [sys.executable, "-m", "meshgate", "serve", "--policy", str(policy),
                "--ready-file", str(ready), "--reload-settle", "0", "--no-watch",
                "--event-loop", event_loop, "--drain-delay", "0"]
        for role in ("extauthz", "ratelimit", "xds", "metrics"):
            argv += [f"--{role}", "127.0.0.1:0"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"meshgate did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        self.ports = json.loads(ready.read_text())
        self._offset = 0
        self._generation = 0

    def generation(self) -> int:
        """The last generation logged (the log is read from where the last call stopped: it grows by an
        audit line per Check)."""
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        cut = chunk.rfind(b"\n") + 1
        self._offset += cut
        found = LIVE.findall(chunk[:cut].decode(errors="replace"))
        if found:
            self._generation = int(found[-1])
        return self._generation

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(args: argparse.Namespace, server: Server, policy: Path) -> None:
    calls: list[tuple[float, float]] = []  # (start, end) of every Check, perf_counter seconds
    stop = asyncio.Event()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.ports['extauthz']}")
    check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
    request = check_request()
    first = await check(request, timeout=10)
    assert first.status.code == 0, first  # an allow

    async def worker() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await check(request, timeout=10)
            calls.append((started, time.perf_counter()))

    workers = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    await asyncio.sleep(1.0)  # warm-up, not measured
    calls.clear()
    baseline: list[tuple[float, float]] = []
    reloads: list[tuple[float, float]] = []
    texts = [yaml.safe_dump(make_policy(args.models, canary), sort_keys=False) for canary in (20, 10)]
    for r in range(args.rounds):
        begin = time.perf_counter()
        await asyncio.sleep(args.baseline)
        baseline.append((begin, time.perf_counter()))
        generation = server.generation()
        tmp = policy.with_name("policy.yaml.tmp")
        tmp.write_text(texts[r % 2])
        tmp.replace(policy)
        begin = time.perf_counter()
        server.proc.send_signal(signal.SIGHUP)
        while server.generation() <= generation:
            await asyncio.sleep(0.002)
        reloads.append((begin, time.perf_counter()))
    stop.set()
    await asyncio.gather(*workers)
    await channel.close()

    def started_in(windows: list[tuple[float, float]]) -> list[float]:
        return [(e - s) * 1000 for s, e in calls if any(a <= s < b for a, b in windows)]

    def in_flight(windows: list[tuple[float, float]]) -> list[float]:
        return [(e - s) * 1000 for s, e in calls if any(s < b and e > a for a, b in windows)]

    base, during = started_in(baseline), in_flight(reloads)
    durations = [(b - a) * 1000 for a, b in reloads]
    print(f"models {args.models} x 3 versions, {args.rounds} rounds, "
          f"{args.concurrency} Check calls in flight, event loop {args.event_loop}")
    print(f"reload windows (SIGHUP to generation logged): median {statistics.median(durations):.0f} ms, "
          f"max {max(durations):.0f} ms")
    print(f"{'Check latency, ms':<34} {'calls':>7} {'p50':>7} {'p99':>7} {'max':>7}")
    for name, values in (("baseline (no reload)", base), ("in flight during a reload", during)):
        print(f"{name:<34} {len(values):>7} {pct(values, 0.5):>7.2f} {pct(values, 0.99):>7.2f} "
              f"{max(values):>7.2f}")
    print(f"p99 added by a reload: {pct(during, 0.99) - pct(base, 0.99):+.2f} ms (target: under 10 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--baseline", type=float, default=2.0, help="seconds of each baseline window")
    parser.add_argument("--event-loop", default="auto", choices=["auto", "uvloop", "asyncio"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reload-stall-") as tmp:
        workdir = Path(tmp)
        policy = workdir / "policy.yaml"
        policy.write_text(yaml.safe_dump(make_policy(args.models, 10), sort_keys=False))
        server = Server(workdir, policy, args.event_loop)
        try:
            asyncio.run(measure(args, server, policy))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
