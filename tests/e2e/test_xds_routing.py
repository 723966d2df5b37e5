"""A real Envoy fed only by meshgate's ADS, in front of real KServe demo models: canary, A/B, shadow,
and a weight change (with a version added and one removed) that fails no request.

ext_authz and ratelimit are left out (MESHGATE_XDS_FILTERS=none): these tests are about routing.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from meshgate.xds.bootstrap import bootstrap_dict, envoy_bootstrap
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import free_port, wait_until

MODEL = "demo"
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}
SIGMAS = 5.0


def binomial_ok(hits: int, n: int, p: float) -> bool:
    """`hits` out of `n` is within SIGMAS standard deviations of a Binomial(n, p) mean."""
    return abs(hits - n * p) <= SIGMAS * math.sqrt(n * p * (1 - p))


class Gateway:
    def __init__(
        self,
        tmp_path: Path,
        servers: dict[str, ModelServer],
        meshgate_factory: Callable[..., Meshgate],
        envoy_factory: Callable[..., Envoy],
        *,
        delta: bool = True,
    ) -> None:
        self.servers = servers
        self.port = free_port()
        self.policy_path = tmp_path / "policy.yaml"
        self.write({"v1": 90, "v2": 10})
        self.meshgate = meshgate_factory(self.policy_path, env={"MESHGATE_XDS_FILTERS": "none"})
        # exactly what `meshgate envoy-bootstrap` prints (the harness only swaps the admin address)
        bootstrap = envoy_bootstrap("gateway-1", xds=self.meshgate.address("xds"), delta=delta)
        self.envoy = envoy_factory(bootstrap)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10.0, trust_env=False)

    def write(self, weights: dict[str, int], **extra: Any) -> None:
        versions = [
            {"name": v, "weight": w, "endpoints": [f"127.0.0.1:{self.servers[v].http_port}"]}
            for v, w in weights.items()
        ]
        doc = {
            "version": 1,
            "gateway": {"port": self.port},
            "models": [{"name": MODEL, "versions": versions, "retries": {"attempts": 0}, **extra}],
        }
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        tmp.replace(self.policy_path)

    def infer(self, **headers: str) -> httpx.Response:
        return self.client.post(f"/v2/models/{MODEL}/infer", json=BODY, headers=headers)

    def version(self, **headers: str) -> str:
        response = self.infer(**headers)
        assert response.status_code == 200, response.text
        return str(response.json()["model_version"])

    def route_clusters(self) -> set[str]:
        dump = json.dumps(self.envoy.config_dump(resource="dynamic_route_configs"))
        return {c for c in ("v1", "v2", "v3") if f"model|{MODEL}|{c}" in dump}


@pytest.fixture
def servers(model_server_factory: Callable[..., ModelServer]) -> dict[str, ModelServer]:
    started = {v: model_server_factory(MODEL, v, wait=False) for v in ("v1", "v2", "v3")}
    for server in started.values():
        server.wait_ready()
    return started


@pytest.fixture
def gateway(
    tmp_path: Path,
    servers: dict[str, ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> Gateway:
    return Gateway(tmp_path, servers, meshgate_factory, envoy_factory)


def test_config_arrives_over_ads_only(gateway: Gateway) -> None:
    clusters = {s["name"] for s in gateway.envoy.clusters()["cluster_statuses"]}
    assert {f"model|{MODEL}|v1", f"model|{MODEL}|v2", "meshgate_xds"} <= clusters
    assert "meshgate_gateway" in gateway.envoy.listeners()


def test_canary_90_10_and_header_ab(gateway: Gateway) -> None:
    counts = Counter(gateway.version() for _ in range(1000))
    assert set(counts) <= {"v1", "v2"}, counts
    assert binomial_ok(counts["v2"], 1000, 0.10), counts

    gateway.write({"v1": 90, "v2": 10}, ab=[{"header": "x-experiment", "value": "b", "version": "v2"}])
    wait_until(
        lambda: "x-experiment" in json.dumps(gateway.envoy.config_dump(resource="dynamic_route_configs")),
        15,
        what="A/B route in Envoy",
    )
    assert {gateway.version(**{"x-experiment": "b"}) for _ in range(50)} == {"v2"}


def test_shadow_gets_its_share_and_the_client_only_sees_the_primary(gateway: Gateway) -> None:
    gateway.write({"v1": 100, "v2": 0, "v3": 0}, shadow={"version": "v3", "percent": 20})
    wait_until(
        lambda: (
            "request_mirror_policies"
            in json.dumps(gateway.envoy.config_dump(resource="dynamic_route_configs"))
        ),
        15,
        what="shadow route in Envoy",
    )
    stat = f"cluster.model|{MODEL}|v3.upstream_rq_total"  # counted when the mirror is sent
    before = gateway.envoy.stat(stat)
    seen = Counter(gateway.version() for _ in range(500))
    assert seen == {"v1": 500}
    mirrored = gateway.envoy.stat(stat) - before
    assert binomial_ok(mirrored, 500, 0.20), mirrored


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_weight_change_with_new_and_removed_version_fails_no_request(
    delta: bool,
    tmp_path: Path,
    servers: dict[str, ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    gateway = Gateway(tmp_path, servers, meshgate_factory, envoy_factory, delta=delta)
    stop = threading.Event()
    results: list[tuple[int, str]] = []

    def load() -> None:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{gateway.port}", timeout=10.0, trust_env=False
        ) as client:
            while not stop.is_set():
                response = client.post(f"/v2/models/{MODEL}/infer", json=BODY)
                version = response.json().get("model_version", "") if response.status_code == 200 else ""
                results.append((response.status_code, version))

    sender = threading.Thread(target=load)
    sender.start()
    try:
        wait_until(lambda: len(results) >= 50 or None, 30, what="traffic before the change")
        gateway.write({"v2": 50, "v3": 50})  # v1 leaves, v3 arrives: clusters before routes, removal last
        wait_until(lambda: gateway.route_clusters() == {"v2", "v3"} or None, 15, what="new routes in Envoy")
        wait_until(
            lambda: f"model|{MODEL}|v1" not in json.dumps(gateway.envoy.clusters()) or None,
            15,
            what="v1 cluster removed",
        )
        mark = len(results)
        wait_until(lambda: len(results) >= mark + 200 or None, 30, what="traffic after the change")
    finally:
        stop.set()
        sender.join()
    failures = [r for r in results if r[0] != 200]
    assert not failures, f"{len(failures)} of {len(results)} failed: {failures[:5]}"
    after = Counter(v for _, v in results[mark:])
    assert set(after) == {"v2", "v3"}, after


def test_triton_grpc_routed_by_model_header(
    tmp_path: Path,
    servers: dict[str, ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    """A v2-grpc model: HTTP/2 to the backends, chosen by x-meshgate-model (which extauthz would set)."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    port = free_port()
    versions = [
        {"name": v, "weight": w, "endpoints": [f"127.0.0.1:{servers[v].grpc_port}"]}
        for v, w in (("v1", 0), ("v2", 100))
    ]
    doc = {
        "version": 1,
        "gateway": {"port": port},
        "models": [{"name": MODEL, "protocol": "v2-grpc", "versions": versions}],
    }
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    meshgate = meshgate_factory(policy_path, env={"MESHGATE_XDS_FILTERS": "none"})
    envoy_factory(bootstrap_dict("gateway-grpc", xds=meshgate.address("xds")))
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        headers = {"x-meshgate-model": MODEL}
        assert client.is_model_ready(MODEL, headers=headers)
        tensor = grpcclient.InferInput("INPUT0", [1, 2], "INT32")
        tensor.set_data_from_numpy(np.array([[1, 2]], dtype=np.int32))
        result = client.infer(MODEL, [tensor], headers=headers)
        assert result.as_numpy("OUTPUT0").ravel().tolist() == servers["v2"].expected([1, 2])
        assert result.get_response().model_version == "v2"
    finally:
        client.close()
