"""Model readiness in EDS, end to end: a real Envoy fed only by meshgate's ADS, real KServe demo models,
`meshgate serve` probing them. A version whose server stops is marked UNHEALTHY and its traffic moves to
the healthy version (its cluster fails over to the other version's endpoints at priority 1; the routes
never change); it comes back when its server does.

ext_authz and ratelimit are left out (MESHGATE_XDS_FILTERS=none): this is about routing.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from meshgate.xds.bootstrap import envoy_bootstrap
from tests.harness.envoy import Envoy, dumped_routes
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import free_port, wait_until

MODEL = "demo"
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}


class Load:
    """A steady stream of inference requests through the gateway in a thread: (status, version) each."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load")

    def _run(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10.0, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"/v2/models/{MODEL}/infer", json=BODY)
                except httpx.HTTPError as exc:  # counted as a failure, never hidden
                    self.results.append((0, type(exc).__name__))
                    continue
                ok = response.status_code == 200
                self.results.append((response.status_code, response.json()["model_version"] if ok else ""))

    def wait_for(self, more: int, what: str) -> int:
        """Wait until `more` requests completed from now; returns the index where they start."""
        mark = len(self.results)
        wait_until(lambda: len(self.results) >= mark + more or None, 60, what=what)
        return mark

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def eds_health(envoy: Envoy, cluster: str, priority: int | None = 0) -> list[str]:
    """The EDS health status Envoy holds for each host of `cluster` at `priority` (None: all), from
    /clusters (priority 1 holds the other versions' endpoints, the failover)."""
    for status in envoy.clusters()["cluster_statuses"]:
        if status["name"] == cluster:
            return [
                h["health_status"].get("eds_health_status", "UNKNOWN")
                for h in status.get("host_statuses", [])
                if priority is None or h.get("priority", 0) == priority
            ]
    return []


def route_clusters(envoy: Envoy) -> set[str]:
    """The versions the canary route of MODEL sends to, as Envoy holds it."""
    dump = envoy.config_dump(resource="dynamic_route_configs")
    found: set[str] = set()
    for config in dump.get("configs", []):
        for host in config["route_config"].get("virtual_hosts", []):
            for route in dumped_routes(host):
                if route.get("name") != f"{MODEL}|canary":
                    continue
                action: dict[str, Any] = route["route"]
                names = [c["name"] for c in action.get("weighted_clusters", {}).get("clusters", [])]
                found |= {n.rsplit("|", 1)[1] for n in names or [action["cluster"]]}
    return found


def test_a_stopped_version_loses_its_traffic_without_failed_requests_and_gets_it_back(
    tmp_path: Path,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    servers = {v: model_server_factory(MODEL, v, wait=False) for v in ("v1", "v2")}
    for server in servers.values():
        server.wait_ready()
    port = free_port()
    doc = {
        "version": 1,
        "gateway": {"port": port},
        "models": [
            {
                "name": MODEL,
                # the default retry (1, on connect-failure): a request that reaches the stopped server
                # before Envoy hears of it is retried at the next priority, the healthy version
                "health_check": {
                    "interval": "200ms",
                    "timeout": "500ms",
                    "unhealthy_threshold": 1,
                    "healthy_threshold": 1,
                },
                "versions": [
                    {"name": v, "weight": 50, "endpoints": [f"127.0.0.1:{servers[v].http_port}"]}
                    for v in ("v1", "v2")
                ],
            }
        ],
    }
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(doc, sort_keys=False))
    meshgate = meshgate_factory(policy, env={"MESHGATE_XDS_FILTERS": "none"})
    envoy = envoy_factory(envoy_bootstrap("gateway-health", xds=meshgate.address("xds")))
    v2 = f"model|{MODEL}|v2"
    wait_until(lambda: eds_health(envoy, v2) == ["HEALTHY"] or None, 30, what="v2 HEALTHY in Envoy's EDS")
    assert route_clusters(envoy) == {"v1", "v2"}

    with Load(port) as load:
        start = load.wait_for(100, "traffic before the stop")
        stopped_at = len(load.results)
        servers["v2"].stop()
        wait_until(lambda: eds_health(envoy, v2) == ["UNHEALTHY"] or None, 30, what="v2 UNHEALTHY in EDS")
        converged = load.wait_for(10, "traffic after the move")
        # health, not retries, keeps the traffic off v2 now: not one more connection attempt to it (the
        # baseline is taken a few requests later, once Envoy's worker surely applied the update)
        connect_fail = f"cluster.{v2}.upstream_cx_connect_fail"
        failed_connects = envoy.stat(connect_fail)
        load.wait_for(200, "more traffic after the move")
        assert envoy.stat(connect_fail) == failed_connects
        restarted_at = len(load.results)
        servers["v2"].start()  # same ports
        wait_until(lambda: eds_health(envoy, v2) == ["HEALTHY"] or None, 60, what="v2 HEALTHY again")
        back = load.wait_for(200, "traffic after the comeback")
        end = len(load.results)
    results = load.results

    before = results[start:stopped_at]
    assert before and all(status == 200 for status, _ in before), Counter(before)
    # the load is one serial client: at most one request is in flight when the server stops, and it is
    # the only one allowed to fail; the others that reach v2 before Envoy hears of the health are retried
    # at the next priority (v1) after their connect failure, and once EDS says UNHEALTHY none goes to v2
    window = results[stopped_at:converged]
    failed = [r for r in window if r[0] != 200]
    assert len(failed) <= 1, Counter(failed)
    after = results[converged:]
    assert all(status == 200 for status, _ in after), Counter(r for r in after if r[0] != 200)
    assert Counter(v for _, v in results[converged:restarted_at]) == {"v1": restarted_at - converged}
    assert {v for _, v in results[back:end]} == {"v1", "v2"}  # v2 has its share again
    assert route_clusters(envoy) == {"v1", "v2"}  # only the assignments changed, never the route
    # connect failures do not eject (outlier detection is for 5xx answers): v2 was back at once
    assert envoy.stat(f"cluster.{v2}.outlier_detection.ejections_enforced_total") == 0


def test_dead_endpoints_get_no_requests_and_a_dead_version_is_served_by_the_other(
    tmp_path: Path,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    """An endpoint nobody listens on is UNHEALTHY in EDS from the first probe: a version with no healthy
    endpoint is served by the other version (failover), a version with one good endpoint of two keeps
    its traffic and Envoy skips the bad one."""
    good = model_server_factory(MODEL, "v1")
    dead = f"127.0.0.1:{free_port()}"
    port = free_port()
    doc = {
        "version": 1,
        "gateway": {"port": port},
        "models": [
            {
                "name": MODEL,
                "retries": {"attempts": 0},
                "health_check": {"interval": "300ms", "timeout": "500ms", "unhealthy_threshold": 1},
                "versions": [
                    {"name": "v1", "weight": 90, "endpoints": [f"127.0.0.1:{good.http_port}", dead]},
                    {"name": "v2", "weight": 10, "endpoints": [f"127.0.0.1:{free_port()}"]},
                ],
            }
        ],
    }
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(doc, sort_keys=False))
    meshgate = meshgate_factory(policy, env={"MESHGATE_XDS_FILTERS": "none"})
    envoy = envoy_factory(envoy_bootstrap("gateway-health-2", xds=meshgate.address("xds")))
    wait_until(
        lambda: eds_health(envoy, f"model|{MODEL}|v1") == ["HEALTHY", "UNHEALTHY"] or None,
        30,
        what="v1: one HEALTHY, one UNHEALTHY endpoint",
    )
    wait_until(
        lambda: eds_health(envoy, f"model|{MODEL}|v2", None) == ["UNHEALTHY", "HEALTHY", "UNHEALTHY"] or None,
        30,
        what="v2: its endpoint UNHEALTHY, v1's two as failover",
    )
    assert route_clusters(envoy) == {"v1", "v2"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0, trust_env=False) as client:
        answers = [client.post(f"/v2/models/{MODEL}/infer", json=BODY) for _ in range(50)]
    assert [r.status_code for r in answers] == [200] * 50
    assert {r.json()["model_version"] for r in answers} == {"v1"}
    dump = json.dumps(envoy.config_dump(include_eds=True))
    assert '"health_status": "UNHEALTHY"' in dump
