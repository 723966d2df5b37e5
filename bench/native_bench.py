"""Envoy-native enforcement against ext_authz, through real Envoys (issue 20; a benchmark, not a test).

    .venv/bin/python bench/native_bench.py [--rounds 3] [--seconds 5] [--connections 16]
                                           [--rows raw,hand,routing,ext_authz,native,auto] [--models 1]

Needs `wrk` (Debian: `apt-get install -y wrk`); the bench is not run in CI. Every process listens on
127.0.0.1 and is stopped by PID at the end. Every Envoy is Envoy 1.40 from `meshgate.binaries`, run
with `--concurrency 1`. The rows, each measured by `wrk -t1 -c16 -d<seconds>s --latency` with one fixed
header set (GET `/v2/models/bench/infer`, `authorization: Bearer <one valid RS256 JWT>`; no Lua):

  raw        a static Envoy listener routing straight to the upstream, no filters
  hand       the same static Envoy, a listener with hand-written native enforcement of the policy:
             jwt_authn (inline JWKS, jwt cache), rbac on the roles claim, local_ratelimit per user
             (bench/native_bench_configs.py)
  routing    `meshgate serve`'s xDS with MESHGATE_XDS_FILTERS=none: meshgate's listener, routes and
             clusters (EDS, retries, circuit breakers) and no enforcement; what the rows below build on
  ext_authz  `meshgate serve` with gateway.enforcement: ext_authz, its gateway Envoy bootstrapped by
             `meshgate envoy-bootstrap` (ADS): ext_authz and ratelimit filters calling meshgate
  native     the same with gateway.enforcement: native (no call to meshgate per request)
  auto       the same with gateway.enforcement: auto

The meshgate rows serve one policy (policy_doc): one issuer with an inline JWKS (RS256), one tenant, one
role allowed the model, one v2-rest model (no health probes), and a per-user request quota of 10^9 a
second (never refuses); with `--models N`, N such models, the timed one last (a gateway serving many
models: docs/native.md "Many models"); each row has its own `meshgate serve` (counters in memory: no
Redis) and gateway Envoy. The upstream of every row is one more Envoy answering 200 with a
direct_response, the same answer for every row; the proofs below ask it (`x-bench-echo`) to echo the
identity headers it received.

Before timing, each row proves it works: a GET and a POST with the token get 200; in every row but raw
and routing the upstream saw the tenant and user, a request without a token gets 401 and one whose
token lacks the role gets 403. A row that fails is printed as broken with the reason and not timed. A
native or auto row whose gateway Envoy has no jwt_authn filter (the compile does not produce a native gateway)
or whose meshgate refuses the policy is printed as "not available: <reason>". After one 1 s warm-up
per row, the rows run interleaved, `--rounds` times, in an order rotated every round, so a drift in
the machine's load hits every row alike.

Printed per row: req/s (median over rounds), ratio to raw (median of the per-round ratios against the
raw run of the same round), p50 and p99 latency (ms, median over rounds, from wrk's histogram), CPU
per request of the gateway Envoy and of meshgate (µs, from /proc/<pid>/stat over the timed runs; less
sensitive to other load on the machine than req/s), and non-2xx answers. Then the issue's goal:
meshgate native >= 0.75x raw, p99 within 1 ms of hand.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from native_bench_configs import (  # noqa: E402
    ECHO_HEADER,
    PATH,
    SEEN,
    TENANT,
    USER,
    Keys,
    front_bootstrap,
    policy_doc,
    upstream_bootstrap,
)

from meshgate import binaries  # noqa: E402
from tests.harness.envoy import Envoy  # noqa: E402
from tests.harness.meshgate import Meshgate  # noqa: E402
from tests.harness.procs import StartupError, free_port, wait_for_tcp  # noqa: E402
from tests.harness.stack import Stack  # noqa: E402

ROWS = ("raw", "hand", "routing", "ext_authz", "ext_authz_http", "native", "auto")
MESHGATE_ROWS = ("routing", "ext_authz", "ext_authz_http", "native", "auto")
# ext_authz_http: enforcement ext_authz, the Check over HTTP (transport http, admission extauthz); the
# bench's per-user quota is a KServe model's, which stays on the rate limit filter
# (contract.admitted_in_check): an HTTP Check and a gRPC rate limit call per request
UNGUARDED = ("raw", "routing")  # rows without enforcement: only the 200 is proved


@dataclass
class Row:
    name: str
    port: int = 0
    envoy_pid: int | None = None
    meshgate_pid: int | None = None
    envoy: Envoy | None = None  # a meshgate row's gateway Envoy
    status: str = "ok"  # ok | broken: ... | not available: ...
    filters: list[str] = field(default_factory=list)
    runs: list[dict[str, float]] = field(default_factory=list)


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# wrk ---------------------------------------------------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/sec, the 50 % and 99 % latencies (ms), requests, non-2xx answers and socket errors."""
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        result[f"p{pct}"] = _ms(re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    result["requests"] = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = float(sum(map(int, errors.groups()))) if errors else 0.0
    return result


def run_wrk(port: int, token: str, *, seconds: int, connections: int) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
            "-H", f"authorization: Bearer {token}", f"http://127.0.0.1:{port}{PATH}"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60)
    return parse_wrk(done.stdout)


# proofs ------------------------------------------------------------------------------------------------
def request(
    port: int, token: str | None, *, body: bytes | None = None, echo: bool = False
) -> tuple[int, dict[str, str]]:
    """GET (POST with a JSON body) of PATH; (status, response headers). `echo`: ask the upstream for
    the identity it saw (ECHO_HEADER)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if echo:
        headers[ECHO_HEADER] = "1"
    if body is not None:
        headers["content-type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET" if body is None else "POST", PATH, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def prove(row: Row, keys: Keys, token: str) -> str:
    """'ok', or why the row is broken."""
    try:
        return _prove(row, keys, token)
    except OSError as err:
        return f"broken: {err!r}"


def _prove(row: Row, keys: Keys, token: str) -> str:
    status, headers = request(row.port, token, echo=True)
    if status != 200:
        return f"broken: a valid token got {status}"
    status, _ = request(row.port, token, body=b'{"inputs": []}')
    if status != 200:
        return f"broken: a POST with a valid token got {status}"
    if row.name not in UNGUARDED:
        seen = {key: headers.get(header) for key, header in SEEN.items() if key != "model"}
        if seen != {"tenant": TENANT, "user": USER}:
            return f"broken: the upstream saw identity {seen}, wanted tenant {TENANT} user {USER}"
        status, _ = request(row.port, None)
        if status != 401:
            return f"broken: no token got {status}, wanted 401"
        status, _ = request(row.port, keys.token(roles=()))
        if status != 403:
            return f"broken: a token without the role got {status}, wanted 403"
    return "ok"


# processes ---------------------------------------------------------------------------------------------
def http_filters(envoy: Envoy) -> list[str]:
    """Names of the HTTP filters of the gateway Envoy's dynamic listeners."""
    dump = envoy.config_dump(resource="dynamic_listeners")
    names: list[str] = []
    for listener in dump.get("configs", []):
        active = listener.get("active_state", {}).get("listener", {})
        for chain in active.get("filter_chains", []):
            for network in chain.get("filters", []):
                names += [f["name"] for f in network.get("typed_config", {}).get("http_filters", [])]
    return names


def start_meshgate_row(
    name: str, stack: Stack, work: Path, keys: Keys, upstream: int, *, models: int = 1, tenants: int = 1
) -> Row:
    row = Row(name, port=free_port())
    enforcement = "ext_authz" if name in ("routing", "ext_authz_http") else name
    doc = policy_doc(
        enforcement=enforcement,
        gateway_port=row.port,
        upstream_port=upstream,
        jwks=keys.jwks,
        models=models,
        tenants=tenants,
    )
    if name == "ext_authz_http":
        doc["gateway"].update(ext_authz={"transport": "http"}, ratelimit={"admission": "extauthz"})
    env = {"MESHGATE_XDS_FILTERS": "none"} if name == "routing" else None
    meshgate = Meshgate(doc, workdir=work / name, extra_args=["--no-watch"], env=env)
    failed = "not available" if name in ("native", "auto") else "broken"
    try:
        stack.add(meshgate).start()
    except StartupError:
        meshgate.stop()  # (off the harness's watch of unexpected exits)
        row.status = f"{failed}: meshgate serve: {_last_line(meshgate.proc.tail(3))}"
        return row
    row.meshgate_pid = meshgate.proc.pid
    argv = [*binaries.meshgate_argv(), "envoy-bootstrap", "--node-id", f"bench-{name}",
            "--xds", meshgate.address("xds")]  # fmt: skip
    boot = yaml.safe_load(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    envoy = stack.add(Envoy(boot, workdir=work / name, log_level="warning", name=f"gateway-{name}"))
    try:  # a gateway listener Envoy rejects (NACK) never binds its port
        envoy.start()
        wait_for_tcp("127.0.0.1", row.port, 30, proc=envoy.proc)
    except StartupError:
        rejected = [line for line in envoy.proc.tail(200).splitlines() if "rejected" in line]
        why = _last_line(rejected[-1].split("rejected: ", 1)[-1] if rejected else envoy.proc.tail(3))
        envoy.stop()
        row.status = f"{failed}: gateway Envoy: {why}"
        return row
    row.envoy, row.envoy_pid = envoy, envoy.proc.pid
    row.filters = http_filters(envoy)
    if name in ("native", "auto") and "envoy.filters.http.jwt_authn" not in row.filters:
        row.status = f"not available: enforcement {name} compiled no jwt_authn filter"
    return row


def _last_line(text: str) -> str:
    """The last line of a log, without a leading timestamp."""
    lines = text.strip().splitlines()
    return re.sub(r"^\[?\d{4}-\d\d-\d\d[ T][\d:.,]+\]?\s*", "", lines[-1])[:300] if lines else "(no log)"


def start_rows(names: list[str], stack: Stack, work: Path, keys: Keys, *, models: int = 1) -> list[Row]:
    upstream = stack.add(Envoy(upstream_bootstrap(), workdir=work, log_level="warning", name="upstream"))
    upstream_port = upstream.start().listener_port("upstream")
    rows: list[Row] = []
    if {"raw", "hand"} & set(names):
        front = stack.add(Envoy(front_bootstrap(upstream_port, keys), workdir=work, log_level="warning",
                                name="front"))  # fmt: skip
        front.start()
        rows += [
            Row(n, port=front.listener_port(n), envoy_pid=front.proc.pid)
            for n in ("raw", "hand")
            if n in names
        ]
    meshgate_rows = [n for n in names if n in MESHGATE_ROWS]
    rows += [start_meshgate_row(n, stack, work, keys, upstream_port, models=models) for n in meshgate_rows]
    return rows


# measuring ---------------------------------------------------------------------------------------------
def measure(rows: list[Row], token: str, args: argparse.Namespace) -> None:
    live = [r for r in rows if r.status == "ok"]
    for row in live:  # warm-up: connections, caches, JIT-free but page-cache and allocator warm
        run_wrk(row.port, token, seconds=1, connections=args.connections)
    for n in range(args.rounds):
        order = live[n % len(live) :] + live[: n % len(live)] if live else []
        for row in order:
            cpu = (cpu_seconds(row.envoy_pid), cpu_seconds(row.meshgate_pid))
            result = run_wrk(row.port, token, seconds=args.seconds, connections=args.connections)
            result["round"] = n
            result["envoy_us"] = (cpu_seconds(row.envoy_pid) - cpu[0]) * 1e6 / max(result["requests"], 1)
            result["meshgate_us"] = (
                (cpu_seconds(row.meshgate_pid) - cpu[1]) * 1e6 / max(result["requests"], 1)
            )
            row.runs.append(result)
            print(f"  round {n + 1} {row.name:9} {result['rps']:9.0f} req/s  p50 {result['p50']:.2f} ms"
                  f"  p99 {result['p99']:.2f} ms  non-2xx {result['non2xx']:.0f}", flush=True)  # fmt: skip


def report(rows: list[Row]) -> dict[str, dict[str, float]]:
    raw = next((r for r in rows if r.name == "raw" and r.runs), None)
    raw_by_round = {run["round"]: run["rps"] for run in raw.runs} if raw else {}
    print("\n| row | req/s (median) | ratio to raw | p50 ms | p99 ms | Envoy CPU µs/req "
          "| meshgate CPU µs/req | non-2xx |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    summary: dict[str, dict[str, float]] = {}
    for row in rows:
        if not row.runs:
            print(f"| {row.name} | {row.status} | | | | | | |")
            continue

        def med(key: str, runs: list[dict[str, float]] = row.runs) -> float:
            return statistics.median(run[key] for run in runs)

        ratios = [run["rps"] / raw_by_round[run["round"]] for run in row.runs if run["round"] in raw_by_round]
        s = summary[row.name] = {"rps": med("rps"), "p50": med("p50"), "p99": med("p99"),
                                 "ratio": statistics.median(ratios) if ratios else float("nan")}  # fmt: skip
        mesh = f"{med('meshgate_us'):.0f}" if row.meshgate_pid else "-"
        bad = sum(run["non2xx"] + run["errors"] for run in row.runs)
        print(f"| {row.name} | {s['rps']:,.0f} | {s['ratio']:.2f} | {s['p50']:.2f} | {s['p99']:.2f} "
              f"| {med('envoy_us'):.0f} | {mesh} | {bad:.0f} |")  # fmt: skip
    return summary


def goal(summary: dict[str, dict[str, float]]) -> None:
    native, hand = summary.get("native"), summary.get("hand")
    if native is None:
        print("\ngoal (native >= 0.75x raw, p99 within 1 ms of hand): native row not measured")
        return
    print(
        f"\ngoal: native/raw {native['ratio']:.2f} (>= 0.75: {'yes' if native['ratio'] >= 0.75 else 'NO'})",
        end="",
    )
    if hand is not None:
        gap = native["p99"] - hand["p99"]
        print(f"; native p99 - hand p99 = {gap:+.2f} ms (<= 1 ms: {'yes' if gap <= 1.0 else 'NO'})", end="")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every row")
    parser.add_argument("--seconds", type=int, default=5, help="seconds of each timed wrk run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (-c), one thread")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument(
        "--models", type=int, default=1, help="models the meshgate rows' policy serves, the timed one last"
    )
    args = parser.parse_args()
    names = [n for n in args.rows.split(",") if n]
    if unknown := sorted(set(names) - set(ROWS)):
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    if shutil.which("wrk") is None:
        print("needs wrk on PATH (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    envoy_version = subprocess.run(
        [binaries.find("envoy"), "--version"], capture_output=True, text=True
    ).stdout
    print(
        f"envoy: {envoy_version.strip().split('version: ')[-1]}; wrk -t1 -c{args.connections}, "
        f"{args.rounds} rounds of {args.seconds} s; {args.models} model(s); "
        f"load average {Path('/proc/loadavg').read_text().strip()}"
    )
    keys = Keys()
    token = keys.token()
    with tempfile.TemporaryDirectory(prefix="native-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            rows = start_rows(names, stack, Path(tmp), keys, models=args.models)
            for row in rows:
                if row.status == "ok":
                    row.status = prove(row, keys, token)
                detail = f" (HTTP filters: {', '.join(row.filters)})" if row.filters else ""
                print(f"{row.name}: {row.status}{detail}", flush=True)
            measure(rows, token, args)
        finally:
            stack.close()
    summary = report(rows)
    goal(summary)
    print(f"load average at the end {Path('/proc/loadavg').read_text().strip()}")
    broken = [r for r in rows if r.status.startswith("broken")]
    return 1 if broken or any(run["non2xx"] or run["errors"] for r in rows for run in r.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
