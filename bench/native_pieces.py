"""What each piece of a native gateway's config costs Envoy per request, in instructions (not a test).

    .venv/bin/python bench/native_pieces.py [--enforcement native|auto] [--requests 500]

Starts what bench/native_bench.py starts for its `native` (or `auto`) row, makes the gateway's config
static (bench/native_ablation.py's `static_config`), and counts with callgrind, as
bench/envoy_instructions.py does, the instructions per request of that config and of copies of it with
one piece taken out (docs/native.md, "Performance"). A piece the policy needs changes what the gateway
does without it (the answers' codes are printed; taking out the identity headers also leaves the quota
without its user). Needs valgrind.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from envoy_instructions import count, one_listener  # noqa: E402
from native_ablation import started_gateway, static_config  # noqa: E402

Config = dict[str, Any]


def _hcm(listener: Config) -> Config:
    hcm: Config = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _routes(listener: Config) -> Iterator[Config]:
    for host in _hcm(listener)["route_config"]["virtual_hosts"]:
        yield from host["routes"]


def _without_filters(*names: str) -> Callable[[Config], None]:
    def change(listener: Config) -> None:
        hcm = _hcm(listener)
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] not in names]

    return change


def _no_identity_sets(listener: Config) -> None:
    for route in _routes(listener):
        identity = route.get("typed_per_filter_config", {}).get("meshgate.native.identity")
        if identity:
            mutations = identity["mutations"]["request_mutations"]
            identity["mutations"]["request_mutations"] = [m for m in mutations if "remove" in m]


def _no_header_metadata(listener: Config) -> None:
    for http_filter in _hcm(listener)["http_filters"]:
        if http_filter["name"] == "envoy.filters.http.jwt_authn":
            for provider in http_filter["typed_config"]["providers"].values():
                provider.pop("header_in_metadata", None)
    for route in _routes(listener):
        found = route["match"].get("dynamic_metadata")
        if found:
            route["match"]["dynamic_metadata"] = [m for m in found if m["path"][0]["key"] != "header"]


def _no_retries(listener: Config) -> None:
    for route in _routes(listener):
        route.get("route", {}).pop("retry_policy", None)


def _no_remote_address(listener: Config) -> None:
    _hcm(listener).pop("use_remote_address", None)


def _only_jwt_and_routing(listener: Config) -> None:
    hcm = _hcm(listener)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] in (JWT, ROUTER)]


def _only_jwt_and_routing_no_recheck(listener: Config) -> None:
    _only_jwt_and_routing(listener)
    for http_filter in _hcm(listener)["http_filters"]:
        if http_filter["name"] == JWT:
            for provider in http_filter["typed_config"]["providers"].values():
                provider["clear_route_cache"] = False  # (no fast route can match then: the floor only)


JWT, ROUTER = "envoy.filters.http.jwt_authn", "envoy.filters.http.router"
PIECES: dict[str, Callable[[Config], None]] = {
    "the identity headers set": _no_identity_sets,
    "the quota filter": _without_filters("meshgate.quota.per-user"),
    "jwt_authn's header_in_metadata and the alg matcher": _no_header_metadata,
    "the decision and the guard filters": _without_filters("meshgate.native.decide", "meshgate.native.guard"),
    "the guard filter": _without_filters("meshgate.native.guard"),
    "the retry policy": _no_retries,
    "use_remote_address": _no_remote_address,
    # the floor: meshgate's routing and jwt_authn, every filter of the contract out (answers stay 200:
    # nothing refuses)
    "every filter but jwt_authn and the router": _only_jwt_and_routing,
    "the same, and jwt_authn's route cache clearing": _only_jwt_and_routing_no_recheck,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--enforcement", choices=("native", "auto"), default="native")
    parser.add_argument("--requests", type=int, default=500, help="counted requests per config (default 500)")
    args = parser.parse_args()
    results: dict[str, tuple[float, dict[int, int]]] = {}
    with started_gateway(args.enforcement, "native-pieces-") as gateway:
        boot, _ = static_config(gateway.dump)
        template = boot["static_resources"].pop("_listener")
        for i, (name, change) in enumerate({"(all)": lambda _: None, **PIECES}.items()):
            listener = copy.deepcopy(template)
            change(listener)
            config, port = one_listener(boot, listener)
            (gateway.work / f"piece{i}").mkdir()
            results[name] = count(config, port, gateway.token, args.requests, gateway.work / f"piece{i}")
            print(f"{name}: {results[name][0]:,.0f}", file=sys.stderr)
    whole = results["(all)"][0]
    print(f"\n{args.enforcement}: {args.requests} requests per config\n")
    print("| taken out | answers | instructions / request | saved |\n|---|---|---|---|")
    for name, (per, codes) in results.items():
        print(f"| {name} | {codes} | {per:,.0f} | {whole - per:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
