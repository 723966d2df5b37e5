"""Request bodies through the whole gateway (ext_authz + ratelimit on, KServe demo ModelServer behind):
a model named in the path takes bodies of any size up to its `max_request_bytes`, streamed (ext_authz
reads none of it); Triton gRPC is checked on the head of its message, so a large tensor passes too.
Tensors of 2.4 MB, over twice the 1 MiB that ext_authz buffers (`gateway.ext_authz.max_request_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.e2e.test_models_gateway import KEYS, chain_policy, start_chain
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import free_port

ACME = {"x-api-key": KEYS["acme"]}
ELEMENTS = 600_000  # INT32: 2.4 MB of tensor
LIMIT = 8 << 20  # the REST model's max_request_bytes


@pytest.fixture
def gateway(
    tmp_path: Path,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> tuple[int, ModelServer, ModelServer, Envoy]:
    rest = model_server_factory("big", "v1", wait=False)
    grpc = model_server_factory("gbig", "v1", wait=False)
    for server in (rest, grpc):
        server.wait_ready()
    port = free_port()
    models = [
        {
            "name": "big",
            "max_request_bytes": LIMIT,
            "versions": [{"name": "v1", "endpoints": [f"127.0.0.1:{rest.http_port}"]}],
        },
        {
            "name": "gbig",
            "protocol": "v2-grpc",
            "versions": [{"name": "v1", "endpoints": [f"127.0.0.1:{grpc.grpc_port}"]}],
        },
    ]
    envoy = start_chain(tmp_path, chain_policy(port, models), meshgate_factory, envoy_factory, "bodies")
    return port, rest, grpc, envoy


def _values() -> np.ndarray:
    return np.arange(ELEMENTS, dtype=np.int32).reshape(1, ELEMENTS) % 1000


def test_large_tensors_reach_the_model_rest_and_grpc(
    gateway: tuple[int, ModelServer, ModelServer, Envoy],
) -> None:
    port, rest, grpc, envoy = gateway
    values = _values()
    expected = np.array(rest.expected(values.ravel().tolist()), dtype=np.int32)

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}", network_timeout=60.0)
    try:  # tritonclient sends the tensor in binary (its binary tensor extension)
        tensor = httpclient.InferInput("INPUT0", [1, ELEMENTS], "INT32")
        tensor.set_data_from_numpy(values)
        result = client.infer("big", [tensor], headers=dict(ACME))
        assert np.array_equal(result.as_numpy("OUTPUT0").ravel(), expected)
    finally:
        client.close()
    # the same tensor as JSON (about 3.5 MB; tritonclient sends no content-type, which KServe needs)
    doc = {
        "inputs": [
            {"name": "INPUT0", "shape": [1, ELEMENTS], "datatype": "INT32", "data": values.ravel().tolist()}
        ]
    }
    with httpx.Client(timeout=60.0, trust_env=False) as http:
        answer = http.post(f"http://127.0.0.1:{port}/v2/models/big/infer", json=doc, headers=ACME)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["outputs"][0]["data"] == expected.tolist()

    gclient = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        tensor = grpcclient.InferInput("INPUT0", [1, ELEMENTS], "INT32")
        tensor.set_data_from_numpy(values)
        answer = gclient.infer("gbig", [tensor], headers=dict(ACME))
        assert np.array_equal(
            answer.as_numpy("OUTPUT0").ravel(), np.array(grpc.expected(values.ravel().tolist()))
        )
    finally:
        gclient.close()
    assert envoy.stat("http.gateway.ext_authz.ok") >= 3


def test_a_body_above_the_models_limit_is_a_json_413_and_one_without_length_a_411(
    gateway: tuple[int, ModelServer, ModelServer, Envoy],
) -> None:
    port, *_ = gateway
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0, trust_env=False) as client:
        too_large = client.post("/v2/models/big/infer", content=b"0" * (LIMIT + 1), headers=ACME)
        assert too_large.status_code == 413
        assert too_large.json()["error"] == "body_too_large"
        # checked before the credential is even looked at? no: ext_authz answers first
        anonymous = client.post("/v2/models/big/infer", content=b"0" * (LIMIT + 1))
        assert anonymous.status_code == 401

        def chunks() -> bytes:
            yield b'{"inputs": []}'

        chunked = client.post("/v2/models/big/infer", content=chunks(), headers=ACME)  # no Content-Length
        assert chunked.status_code == 411
        assert chunked.json()["error"] == "length_required"
