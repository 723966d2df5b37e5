"""Where a native gateway's time goes: its own config, one filter subset per listener (not a test).

    .venv/bin/python bench/native_ablation.py [--enforcement native|auto] [--rounds 3] [--seconds 4]

Starts what bench/native_bench.py starts for its `native` row (the upstream Envoy, `meshgate serve` with
the bench's policy, the gateway Envoy over ADS), reads the gateway's whole config from its admin
`/config_dump?include_eds`, and starts one more Envoy (`--concurrency 1`) with that config made static:
the route configuration inlined in the listener, EDS clusters given their endpoints, and the listener
repeated once per variant below, each with a subset of the gateway's HTTP filters. The variants and the
gateway itself are then loaded by wrk like native_bench (GET with one valid JWT, 16 connections,
interleaved rounds in a rotating order) and the CPU per request of the Envoy serving them is printed
(µs, from /proc/<pid>/stat; all static variants share one Envoy, measured one at a time), with req/s
and p99. One more variant keeps jwt_authn and the decision filter with a script that does nothing: the
floor of a Lua filter, apart from the decision it runs.
A variant that drops a filter the policy needs may answer differently: every variant's answer
to a valid token and to no token is printed first. Needs `wrk` (Debian: `apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from native_bench import Row, cpu_seconds, request, run_wrk, start_meshgate_row  # noqa: E402
from native_bench_configs import Keys, upstream_bootstrap  # noqa: E402

from tests.harness.envoy import Envoy  # noqa: E402
from tests.harness.stack import Stack  # noqa: E402

ROUTER = "envoy.filters.http.router"
DECIDE = "meshgate.native.decide"
NOOP = " (no-op script)"


def variants(filters: list[str]) -> dict[str, list[str]]:
    """Name -> the filters kept: all; without one at a time; cumulative prefixes of the chain."""
    out = {"all": list(filters)}
    for name in filters:
        if name != ROUTER:
            out[f"-{name.rsplit('.', 1)[-1]}"] = [f for f in filters if f != name]
    chain = [f for f in filters if f != ROUTER]
    for n in range(len(chain)):
        out["+".join(f.rsplit(".", 1)[-1] for f in chain[:n]) or "router only"] = [*chain[:n], ROUTER]
    return out


def static_config(dump: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The dumped config as a static bootstrap (no listener yet) and the listener's HTTP filter names."""
    by_type = {c["@type"].rsplit(".", 1)[1]: c for c in dump["configs"]}
    boot = copy.deepcopy(by_type["BootstrapConfigDump"]["bootstrap"])
    boot.pop("dynamic_resources", None)
    endpoints = {
        e["endpoint_config"]["cluster_name"]: e["endpoint_config"]
        for e in by_type["EndpointsConfigDump"].get("dynamic_endpoint_configs", [])
    }
    dynamic = [c["cluster"] for c in by_type["ClustersConfigDump"].get("dynamic_active_clusters", [])]
    clusters = []
    for cluster in copy.deepcopy(boot["static_resources"].get("clusters", []) + dynamic):
        cluster.pop("@type", None)
        if cluster.get("type") == "EDS":
            cluster["type"] = "STATIC"
            cluster.pop("eds_cluster_config", None)
            assignment = copy.deepcopy(endpoints.get(cluster["name"], {"endpoints": []}))
            assignment = {"cluster_name": cluster["name"], "endpoints": assignment.get("endpoints", [])}
            for group in assignment["endpoints"]:
                if not group.get("load_balancing_weight"):
                    group.pop("load_balancing_weight", None)
                for lb in group.get("lb_endpoints", []):
                    lb.pop("health_status", None)
            cluster["load_assignment"] = assignment
        clusters.append(cluster)
    listener = by_type["ListenersConfigDump"]["dynamic_listeners"][0]["active_state"]["listener"]
    routes = by_type["RoutesConfigDump"]["dynamic_route_configs"][0]["route_config"]
    routes.pop("@type", None)
    listener = copy.deepcopy(listener)
    listener.pop("@type", None)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.pop("rds")
    hcm["route_config"] = routes
    boot["static_resources"] = {"clusters": clusters, "listeners": [], "_listener": listener}
    return boot, [f["name"] for f in hcm["http_filters"]]


def with_variants(boot: dict[str, Any], kept: dict[str, list[str]]) -> dict[str, Any]:
    template = boot["static_resources"].pop("_listener")
    for i, (name, filters) in enumerate(kept.items()):
        listener = copy.deepcopy(template)
        listener["name"] = name
        listener["address"]["socket_address"]["port_value"] = 0
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = f"variant{i}"
        hcm["http_filters"] = [copy.deepcopy(f) for f in hcm["http_filters"] if f["name"] in filters]
        if name.endswith(NOOP):  # the decision filter's floor: a Lua filter that does nothing
            for f in hcm["http_filters"]:
                if f["name"] == DECIDE:
                    noop = {"inline_string": "function envoy_on_request(h) end"}
                    f["typed_config"]["default_source_code"] = noop
        boot["static_resources"]["listeners"].append(listener)
    return boot


@dataclass
class Gateway:
    """A started native_bench row: its gateway's `/config_dump?include_eds`, and where to add more."""

    row: Row
    dump: dict[str, Any]
    stack: Stack
    work: Path
    token: str


@contextlib.contextmanager
def started_gateway(enforcement: str, prefix: str) -> Iterator[Gateway]:
    """What native_bench.py starts for its `enforcement` row (the upstream Envoy, `meshgate serve`, the
    gateway Envoy over ADS), in a temporary directory; everything is stopped on leaving. Exits with
    the reason if the row does not start."""
    keys = Keys()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        stack = Stack(work)
        try:
            upstream = stack.add(
                Envoy(upstream_bootstrap(), workdir=work, log_level="warning", name="upstream")
            )
            row = start_meshgate_row(
                enforcement, stack, work, keys, upstream.start().listener_port("upstream")
            )
            if row.status != "ok" or row.envoy is None:
                raise SystemExit(f"{enforcement}: {row.status}")
            dump = json.loads(row.envoy.admin_get("/config_dump?include_eds"))
            yield Gateway(row, dump, stack, work, keys.token())
        finally:
            stack.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--enforcement", choices=("native", "auto"), default="native")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args()
    with started_gateway(args.enforcement, "native-ablation-") as gateway:
        boot, filters = static_config(gateway.dump)
        kept = variants(filters)
        if DECIDE in filters:  # what any Lua filter costs, apart from the decision it runs
            kept["jwt_authn+decide" + NOOP] = [f for f in filters if f in (filters[0], DECIDE, ROUTER)]
        static = gateway.stack.add(
            Envoy(with_variants(boot, kept), workdir=gateway.work, log_level="warning", name="static")
        )
        static.start()
        targets = {name: (static.listener_port(name), static.proc.pid) for name in kept}
        targets["gateway (ADS)"] = (gateway.row.port, gateway.row.envoy_pid)
        _measure(targets, gateway.token, args)
    return 0


def _measure(targets: dict[str, tuple[int, int | None]], token: str, args: argparse.Namespace) -> None:
    for name, (port, _) in targets.items():
        print(f"{name:40} valid token {request(port, token)[0]}, no token {request(port, None)[0]}")
        run_wrk(port, token, seconds=1, connections=16)
    names = list(targets)
    runs: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    for n in range(args.rounds):
        for name in names[n % len(names) :] + names[: n % len(names)]:
            port, pid = targets[name]
            before = cpu_seconds(pid)
            result = run_wrk(port, token, seconds=args.seconds, connections=16)
            cpu = (cpu_seconds(pid) - before) * 1e6 / max(result["requests"], 1)
            runs[name].append((cpu, result["rps"], result["p99"]))
    print("\n| variant (filters kept) | Envoy CPU µs/req | req/s | p99 ms |\n|---|---|---|---|")
    for name in names:
        cpu, rps, p99 = (statistics.median(r[i] for r in runs[name]) for i in range(3))
        print(f"| {name} | {cpu:.0f} | {rps:,.0f} | {p99:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
