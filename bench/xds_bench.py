"""Compile + serialize time and peak memory of the xDS snapshot for N models x 3 versions.

    python bench/xds_bench.py [--models 10,100,1000,5000] [--repeat 3]

Each model has three versions (90/10 canary, a shadow at 5%, an A/B header route) with one endpoint
each. Time is the best of --repeat runs of compile_snapshot (which serializes every resource once and
checks consistency). Memory, measured for each size in a fresh process: "peak RSS" is the process's
high-water mark (VmHWM) during one compile minus its RSS just before (upb messages live in C arenas
that tracemalloc cannot see), and "retained" is what the snapshot still holds afterwards. Not a test:
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshgate.policy.model import Policy
from meshgate.xds import compile_snapshot


def make_policy(models: int) -> Policy:
    docs: list[dict[str, Any]] = []
    for i in range(models):
        base = 10_000 + (3 * i) % 50_000
        docs.append(
            {
                "name": f"model-{i}",
                "versions": [
                    {"name": "v1", "weight": 90, "endpoints": [f"10.{i // 250 % 250}.{i % 250}.1:{base}"]},
                    {
                        "name": "v2",
                        "weight": 10,
                        "endpoints": [f"10.{i // 250 % 250}.{i % 250}.2:{base + 1}"],
                    },
                    {"name": "v3", "weight": 0, "endpoints": [f"10.{i // 250 % 250}.{i % 250}.3:{base + 2}"]},
                ],
                "shadow": {"version": "v3", "percent": 5},
                "ab": [{"header": "x-experiment", "value": "b", "version": "v2"}],
            }
        )
    return Policy.model_validate({"models": docs}, strict=False)


def _vm(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure(models: int, repeat: int) -> dict[str, float]:
    """Run in a fresh process (see --child): memory first, then timing."""
    policy = make_policy(models)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _vm("VmRSS")
    snapshot = compile_snapshot(policy)
    peak = _vm("VmHWM") - before
    retained = _vm("VmRSS") - before
    size, resources = snapshot.size, sum(len(snapshot[t]) for t in snapshot)
    del snapshot
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        compile_snapshot(policy)
        best = min(best, time.perf_counter() - start)
    return {
        "models": models,
        "seconds": best,
        "peak_mib": peak / 2**20,
        "retained_mib": retained / 2**20,
        "bytes": size,
        "resources": resources,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="10,100,1000,5000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.repeat)))
        return
    print(
        f"{'models':>7} {'resources':>9} {'compile+serialize':>18} {'peak RSS MiB':>12} {'retained MiB':>12} "
        f"{'bytes':>11}"
    )
    for n in (int(x) for x in args.models.split(",")):
        argv = [sys.executable, __file__, "--child", str(n), "--repeat", str(args.repeat)]
        r = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
        print(
            f"{n:>7} {r['resources']:>9} {r['seconds'] * 1000:>15.1f} ms {r['peak_mib']:>12.1f} "
            f"{r['retained_mib']:>12.1f} {r['bytes']:>11,}"
        )


if __name__ == "__main__":
    main()
