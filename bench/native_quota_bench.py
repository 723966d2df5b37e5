"""What a request quota costs per request: Envoy's local rate limit (native) against a call to meshgate
ratelimit, through real Envoys (issue 20, docs/native.md "Quotas"; a benchmark, not a test).

    .venv/bin/python bench/native_quota_bench.py [--rounds 3] [--seconds 5] [--connections 16]

Needs `wrk`. Built on bench/native_bench.py (its policy, upstream, wrk runs, proofs and report): three
`meshgate serve` + gateway Envoy pairs, all `gateway.enforcement: auto` (the JWT decided natively), that
differ only in the policy's one per-user quota of 10^9 a second (never refuses):

  no_quota     no quota: the rows below minus their quota
  native       the quota as a fixed window: Envoy's local rate limit, no call to meshgate
  ratelimit    the quota as a sliding window: it stays on meshgate ratelimit, one gRPC call per request

Printed as native_bench prints its rows (req/s, p50/p99, Envoy and meshgate CPU per request; no raw row
here, so its ratio column is nan); compare the CPU columns with no_quota's: the difference is what the
quota costs. Results: docs/native.md, "Quotas".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from native_bench import Row, http_filters, measure, prove, report  # noqa: E402
from native_bench_configs import Keys, policy_doc, upstream_bootstrap  # noqa: E402

from meshgate import binaries  # noqa: E402
from tests.harness.envoy import Envoy  # noqa: E402
from tests.harness.meshgate import Meshgate  # noqa: E402
from tests.harness.procs import free_port, wait_for_tcp  # noqa: E402
from tests.harness.stack import Stack  # noqa: E402

ROWS = ("no_quota", "native", "ratelimit")


def doc_for(name: str, port: int, upstream: int, keys: Keys) -> dict[str, Any]:
    doc = policy_doc(enforcement="auto", gateway_port=port, upstream_port=upstream, jwks=keys.jwks)
    if name == "no_quota":
        doc["quotas"] = []
        for tenant in doc["tenants"]:
            tenant["quotas"] = []
    elif name == "ratelimit":
        for quota in doc["quotas"]:
            quota["algorithm"] = "sliding_window"  # not native: meshgate ratelimit counts it
    return doc


def start_row(name: str, stack: Stack, work: Path, keys: Keys, upstream: int) -> Row:
    row = Row(name, port=free_port())
    meshgate = stack.add(Meshgate(doc_for(name, row.port, upstream, keys), workdir=work / name,
                                  extra_args=["--no-watch"]))  # fmt: skip
    meshgate.start()
    row.meshgate_pid = meshgate.proc.pid
    argv = [*binaries.meshgate_argv(), "envoy-bootstrap", "--node-id", f"bench-{name}",
            "--xds", meshgate.address("xds")]  # fmt: skip
    boot = yaml.safe_load(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    envoy = stack.add(Envoy(boot, workdir=work / name, log_level="warning", name=f"gateway-{name}"))
    envoy.start()
    wait_for_tcp("127.0.0.1", row.port, 30, proc=envoy.proc)
    row.envoy_pid = envoy.proc.pid
    row.filters = http_filters(envoy)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    keys = Keys()
    token = keys.token()
    print(f"load average {Path('/proc/loadavg').read_text().strip()}")
    with tempfile.TemporaryDirectory(prefix="meshgate-quota-bench-") as tmp:
        work, stack = Path(tmp), Stack(Path(tmp))
        try:
            upstream = stack.add(
                Envoy(upstream_bootstrap(), workdir=work, log_level="warning", name="upstream")
            )
            upstream_port = upstream.start().listener_port("upstream")
            rows = [start_row(name, stack, work, keys, upstream_port) for name in ROWS]
            for row in rows:
                row.status = prove(row, keys, token)
                print(f"{row.name}: {row.status} (HTTP filters: {', '.join(row.filters)})", flush=True)
            measure(rows, token, args)
        finally:
            stack.close()
    report(rows)
    print(f"load average at the end {Path('/proc/loadavg').read_text().strip()}")
    return (
        1
        if any(r.status != "ok" or any(run["non2xx"] or run["errors"] for run in r.runs) for r in rows)
        else 0
    )


if __name__ == "__main__":
    sys.exit(main())
