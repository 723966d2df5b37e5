"""A pinned version through the whole gateway (Envoy fed by meshgate's ADS, ext_authz + ratelimit on):
every request that names a version reaches that version's backend, with the path that backend serves.

- KServe (the demo ModelServer, REST and gRPC): `/v2/models/m/versions/stable/infer` goes to the
  `stable` backend as `/v2/models/m/infer` (KServe answers 501 on a versioned URL); gRPC
  `model_version: stable` goes to the `stable` backend (KServe's gRPC server reads no version).
- Triton's numbers (`backend_version`): `/versions/1/...` and `/versions/stable/...` (stable's backend
  version is 1) both reach stable's backend as `/v2/models/tm/versions/1/infer`. The backend is a
  stand-in that records the paths it is asked for (KServe serves no versioned URL).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.e2e.test_models_gateway import KEYS, chain_policy, start_chain
from tests.harness.envoy import Envoy
from tests.harness.http import ThreadedHTTP
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import free_port

N = 100
ACME = {"x-api-key": KEYS["acme"]}


class TritonStandIn(ThreadedHTTP):
    """Answers POST /v2/models/{name}/versions/{number}/infer like Triton (JSON outputs), 400 for
    any other path (Triton: unknown version); records every path it is asked for."""

    def __init__(self, name: str, number: str) -> None:
        self.paths: list[str] = []
        paths = self.paths
        expected = f"/v2/models/{name}/versions/{number}/infer"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                paths.append(self.path)
                if self.path != expected:
                    self._send(400, {"error": f"unknown model/version at {self.path}"})
                    return
                output = {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 1], "data": [int(number)]}
                self._send(200, {"model_name": name, "model_version": number, "outputs": [output]})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                out = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(Handler, name=f"triton-{name}-{number}")


@pytest.fixture
def triton() -> Iterator[dict[str, TritonStandIn]]:
    with TritonStandIn("tm", "1") as one, TritonStandIn("tm", "2") as two:
        yield {"1": one, "2": two}


def _tensor(module: Any) -> Any:
    tensor = module.InferInput("INPUT0", [1, 3], "INT32")
    tensor.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.int32))
    return tensor


def test_a_pinned_version_is_routed_to_it_with_the_path_its_backend_serves(
    tmp_path: Path,
    triton: dict[str, TritonStandIn],
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    servers = {
        (name, version): model_server_factory(name, version, wait=False)
        for name in ("m", "g")
        for version in ("stable", "canary")
    }
    for server in servers.values():
        server.wait_ready()

    def kserve_model(name: str, protocol: str) -> dict[str, Any]:
        port = "http_port" if protocol == "v2-rest" else "grpc_port"
        return {
            "name": name,
            "protocol": protocol,
            "versions": [
                {"name": v, "weight": w, "endpoints": [f"127.0.0.1:{getattr(servers[name, v], port)}"]}
                for v, w in (("stable", 50), ("canary", 50))
            ],
        }

    numbered = {
        "name": "tm",
        "health_check": {"enabled": False},  # the stand-in answers inference only
        "versions": [
            {"name": name, "weight": 50, "backend_version": number, "endpoints": [f"127.0.0.1:{peer.port}"]}
            for name, number, peer in (("stable", "1", triton["1"]), ("next", "2", triton["2"]))
        ],
    }
    port = free_port()
    models = [kserve_model("m", "v2-rest"), kserve_model("g", "v2-grpc"), numbered]
    start_chain(tmp_path, chain_policy(port, models), meshgate_factory, envoy_factory, "pins")

    rest = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    grpc = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        # KServe REST: every pinned request reaches the pinned version, unversioned, and is answered
        for pin in ("stable", "canary"):
            answered = Counter(
                rest.infer("m", [_tensor(httpclient)], model_version=pin, headers=dict(ACME)).get_response()[
                    "model_version"
                ]
                for _ in range(N)
            )
            assert answered == {pin: N}
        # KServe gRPC: the version read from ModelInferRequest routes it
        for pin in ("stable", "canary"):
            answered = Counter(
                grpc.infer("g", [_tensor(grpcclient)], model_version=pin, headers=dict(ACME))
                .get_response()
                .model_version
                for _ in range(N)
            )
            assert answered == {pin: N}
        # an unpinned request still follows the weights (both versions answer within 100 requests)
        unpinned = Counter(
            rest.infer("m", [_tensor(httpclient)], headers=dict(ACME)).get_response()["model_version"]
            for _ in range(N)
        )
        assert set(unpinned) == {"stable", "canary"}

        # Triton numbers: by number or by routing name, the backend is asked for its own number
        for pin, number in (("1", "1"), ("stable", "1"), ("2", "2"), ("next", "2")):
            result = rest.infer("tm", [_tensor(httpclient)], model_version=pin, headers=dict(ACME))
            assert result.as_numpy("OUTPUT0").ravel().tolist() == [int(number)]
        assert triton["1"].paths == ["/v2/models/tm/versions/1/infer"] * 2
        assert triton["2"].paths == ["/v2/models/tm/versions/2/infer"] * 2
    finally:
        rest.close()
        grpc.close()
