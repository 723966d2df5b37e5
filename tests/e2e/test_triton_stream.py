"""tritonclient's gRPC stream (ModelStreamInfer) through the whole gateway, unchanged: authorized on the
head of its first message, routed to the model, every message answered. A model whose policy does not
set `stream_infer` refuses the stream. The demo ModelServer serves Triton's ModelStreamInfer, which
KServe 0.21 lacks (meshgate.models.demo_server.add_stream_infer)."""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from tests.e2e.test_models_gateway import KEYS, chain_policy, start_chain
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import free_port

ACME = {"x-api-key": KEYS["acme"]}
WAIT = 30.0  # bound on each answer: a hang fails the test, it never synchronises it


def _stream(port: int, model: str, values: list[list[int]], headers: dict[str, str]) -> list[Any]:
    """Send one ModelStreamInfer request per row of `values` on one stream; the answers (results or
    errors) in order. The stream is closed after the last answer (or the first error)."""
    answers: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    out = []
    try:
        client.start_stream(callback=lambda result, error: answers.put(error or result), headers=headers)
        for row in values:
            tensor = grpcclient.InferInput("INPUT0", [1, len(row)], "INT32")
            tensor.set_data_from_numpy(np.array([row], dtype=np.int32))
            client.async_stream_infer(model, [tensor])
        for _ in values:
            answer = answers.get(timeout=WAIT)
            out.append(answer)
            if isinstance(answer, Exception):
                break
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    return out


def test_model_stream_infer_through_the_gateway(
    tmp_path: Path,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    streaming = model_server_factory("gstream", "v1", wait=False)
    closed = model_server_factory("gclosed", "v1", wait=False)
    for server in (streaming, closed):
        server.wait_ready()
    port = free_port()

    def grpc_model(server: ModelServer, **extra: Any) -> dict[str, Any]:
        version = {"name": "v1", "endpoints": [f"127.0.0.1:{server.grpc_port}"]}
        return {"name": server.name, "protocol": "v2-grpc", "versions": [version], **extra}

    models = [grpc_model(streaming, stream_infer=True), grpc_model(closed)]
    envoy = start_chain(tmp_path, chain_policy(port, models), meshgate_factory, envoy_factory, "stream")

    rows = [[1, 2, 3], [10, 20, 30], [7, 7, 7]]
    answers = _stream(port, "gstream", rows, dict(ACME))
    assert [a.as_numpy("OUTPUT0").ravel().tolist() for a in answers] == [streaming.expected(r) for r in rows]
    assert envoy.stat("cluster.model|gstream|v1.upstream_rq_total") == 1  # one stream, three messages

    refused = _stream(port, "gclosed", rows[:1], dict(ACME))
    assert refused[0].status() == "StatusCode.PERMISSION_DENIED"
    assert "stream_forbidden" in str(refused[0])
    anonymous = _stream(port, "gstream", rows[:1], {})
    assert anonymous[0].status() == "StatusCode.UNAUTHENTICATED"
    forbidden = _stream(port, "gstream", rows[:1], {"x-api-key": KEYS["globex"]})  # globex: `other` only
    assert forbidden[0].status() == "StatusCode.PERMISSION_DENIED"
    assert "role_forbidden" in str(forbidden[0])
