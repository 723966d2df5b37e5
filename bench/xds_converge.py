"""Time from a policy change to a real Envoy's ACK, and the bytes sent, with delta and SotW ADS.

    python bench/xds_converge.py [--models 1000] [--rounds 5]

An in-process XdsService (ADS on 127.0.0.1:0, debounce off) feeds one Envoy (`envoy` on PATH) a
policy of N models x 3 versions. After the initial sync it applies two kinds of one-model change,
`--rounds` times each: a canary weight change (RDS: the one route configuration changes) and an
endpoint change of one version (EDS: one ClusterLoadAssignment changes). Reported per protocol and
change: median and max seconds from publishing the snapshot to Envoy ACKing all of it (the
meshgate_xds_convergence_seconds measurement), and the resource bytes sent per change. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from meshgate import binaries
from meshgate.policy.model import Policy
from meshgate.xds import CompileOptions, XdsService
from meshgate.xds.bootstrap import bootstrap_dict

OPTIONS = CompileOptions(enable_extauthz=False, enable_ratelimit=False, listener_address="127.0.0.1")


def make_policy(
    models: int, *, weight: dict[int, int], port_shift: dict[int, int], gateway_port: int
) -> Policy:
    docs: list[dict[str, Any]] = []
    for i in range(models):
        w = weight.get(i, 10)
        base = 20_000 + (3 * i) % 40_000 + port_shift.get(i, 0)
        docs.append(
            {
                "name": f"model-{i}",
                "versions": [
                    {"name": "v1", "weight": 100 - w, "endpoints": [f"127.0.0.1:{base}"]},
                    {"name": "v2", "weight": w, "endpoints": [f"127.0.0.1:{base + 1}"]},
                    {"name": "v3", "weight": 0, "endpoints": [f"127.0.0.1:{base + 2}"]},
                ],
                "shadow": {"version": "v3", "percent": 5},
            }
        )
    return Policy.model_validate({"gateway": {"port": gateway_port}, "models": docs}, strict=False)


class Probe:
    """Wraps the service's observer: counts bytes and resolves a future when a proxy converges."""

    def __init__(self, service: XdsService) -> None:
        self.bytes = 0
        self.waiter: asyncio.Future[float] | None = None
        metrics = service.metrics
        pushed, converged = metrics.pushed, metrics.converged

        def on_pushed(type_url: str, nbytes: int) -> None:
            self.bytes += nbytes
            pushed(type_url, nbytes)

        def on_converged(seconds: float) -> None:
            converged(seconds)
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(seconds)

        metrics.pushed = on_pushed  # type: ignore[method-assign]
        metrics.converged = on_converged  # type: ignore[method-assign]

    def expect(self) -> asyncio.Future[float]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.bytes = 0
        return self.waiter


async def run(models: int, rounds: int, *, delta: bool, workdir: Path) -> dict[str, Any]:
    service = XdsService(options=OPTIONS, registry=CollectorRegistry(), quiet=0.0, max_delay=0.0)
    probe = Probe(service)
    server = grpc.aio.server()
    service.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    with socket.socket() as sock:  # a free port for the gateway listener
        sock.bind(("127.0.0.1", 0))
        gateway_port = sock.getsockname()[1]
    policy = make_policy(models, weight={}, port_shift={}, gateway_port=gateway_port)
    service.prepare(policy)()  # as a policy load does: with the gateways' own cluster's endpoints (EDS)
    boot = bootstrap_dict("bench", xds=f"127.0.0.1:{port}", admin_port=0, delta=delta)
    path = workdir / f"bootstrap-{'delta' if delta else 'sotw'}.json"
    path.write_text(json.dumps(boot))
    first = probe.expect()
    envoy = subprocess.Popen(
        [
            binaries.find("envoy"),
            "-c",
            str(path),
            "--disable-hot-restart",
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "-l",
            "error",
        ],
    )
    results: dict[str, Any] = {}
    try:
        initial = await asyncio.wait_for(first, 120)
        results["initial"] = {"seconds": initial, "bytes": probe.bytes}
        for kind in ("weight", "endpoint"):
            times, sizes = [], []
            for r in range(rounds):
                if kind == "weight":
                    change = {"weight": {7: 20 + r}, "port_shift": {}}
                else:  # keep the last weight: only the endpoints change
                    change = {"weight": {7: 20 + rounds - 1}, "port_shift": {7: 50 + r}}
                commit = service.prepare(make_policy(models, gateway_port=gateway_port, **change))
                done = probe.expect()
                commit()
                times.append(await asyncio.wait_for(done, 60))
                sizes.append(probe.bytes)
            results[kind] = {"median_s": statistics.median(times), "max_s": max(times), "bytes": max(sizes)}
    finally:
        envoy.terminate()
        envoy.wait(10)
        await server.stop(None)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for delta in (True, False):
            r = asyncio.run(run(args.models, args.rounds, delta=delta, workdir=Path(tmp)))
            name = "delta" if delta else "sotw"
            first = r["initial"]
            print(f"{name:>5} initial sync: {first['seconds'] * 1000:8.1f} ms {first['bytes']:>11,} B")
            for kind in ("weight", "endpoint"):
                k = r[kind]
                median, worst, sent = k["median_s"] * 1000, k["max_s"] * 1000, k["bytes"]
                print(
                    f"{name:>5} {kind:>8} change: median {median:6.1f} ms, max {worst:6.1f} ms,"
                    f" {sent:>9,} B sent"
                )


if __name__ == "__main__":
    main()
