"""Issue 18's acceptance: tritonclient, unchanged, REST and gRPC (its stream included), through the whole
gateway (Envoy fed by meshgate's ADS, ext_authz + ratelimit) to KServe's ModelServer (the demo model),
for one model served over both protocols (`protocols: [v2-rest, v2-grpc]`): server and model health and
metadata, inference with a tensor over 2 MB, and a pinned version."""

from __future__ import annotations

import queue
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.e2e.test_models_gateway import KEYS, chain_policy, start_chain
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import free_port

ACME = {"x-api-key": KEYS["acme"]}
BIG = 600_000  # INT32 elements: 2.4 MB
PINNED = 30
WAIT = 30.0  # bound on each stream answer (a hang fails, it never synchronises)


def _tensor(module: Any, values: np.ndarray) -> Any:
    tensor = module.InferInput("INPUT0", list(values.shape), "INT32")
    tensor.set_data_from_numpy(values)
    return tensor


def test_tritonclient_unchanged_through_the_gateway(
    tmp_path: Path,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    servers = {v: model_server_factory("tm", v, wait=False) for v in ("stable", "canary")}
    for server in servers.values():
        server.wait_ready()
    versions = [
        {
            "name": v,
            "weight": w,
            "endpoints": [f"127.0.0.1:{servers[v].http_port}"],
            "grpc_endpoints": [f"127.0.0.1:{servers[v].grpc_port}"],
        }
        for v, w in (("stable", 90), ("canary", 10))
    ]
    port = free_port()
    model = {"name": "tm", "protocols": ["v2-rest", "v2-grpc"], "stream_infer": True, "versions": versions}
    start_chain(tmp_path, chain_policy(port, [model]), meshgate_factory, envoy_factory, "acceptance")

    rest = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}", network_timeout=60.0)
    grpc = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        # health and metadata: the gateway's own, then the model's (from its backends)
        assert rest.is_server_live(headers=ACME) and rest.is_server_ready(headers=ACME)
        assert grpc.is_server_live(headers=ACME) and grpc.is_server_ready(headers=ACME)
        assert rest.get_server_metadata(headers=ACME)["name"] == "meshgate"
        assert grpc.get_server_metadata(headers=ACME).name == "meshgate"
        assert rest.is_model_ready("tm", headers=ACME) and grpc.is_model_ready("tm", headers=ACME)
        assert rest.get_model_metadata("tm", headers=ACME)["name"] == "tm"
        assert grpc.get_model_metadata("tm", headers=ACME).name == "tm"

        # a tensor over 2 MB, both protocols
        big = (np.arange(BIG, dtype=np.int32) % 1000).reshape(1, BIG)
        answers = [
            rest.infer("tm", [_tensor(httpclient, big)], headers=dict(ACME)).as_numpy("OUTPUT0"),
            grpc.infer("tm", [_tensor(grpcclient, big)], headers=dict(ACME)).as_numpy("OUTPUT0"),
        ]
        for answer in answers:  # whichever version answered (canary 90/10)
            assert any(
                np.array_equal(answer.ravel(), np.array(s.expected(big.ravel().tolist())))
                for s in servers.values()
            )

        # a pinned version, both protocols: every request answered by it
        small = np.array([[1, 2, 3]], dtype=np.int32)
        for pin in ("canary", "stable"):
            by_rest = Counter(
                rest.infer(
                    "tm", [_tensor(httpclient, small)], model_version=pin, headers=dict(ACME)
                ).get_response()["model_version"]
                for _ in range(PINNED)
            )
            by_grpc = Counter(
                grpc.infer("tm", [_tensor(grpcclient, small)], model_version=pin, headers=dict(ACME))
                .get_response()
                .model_version
                for _ in range(PINNED)
            )
            assert by_rest == by_grpc == {pin: PINNED}
    finally:
        rest.close()
        grpc.close()

    # the gRPC stream, pinned to the canary: every message answered by it
    got: queue.Queue[Any] = queue.Queue()
    stream = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        stream.start_stream(callback=lambda result, error: got.put(error or result), headers=dict(ACME))
        rows = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
        for row in rows:
            stream.async_stream_infer(
                "tm", [_tensor(grpcclient, np.array([row], dtype=np.int32))], model_version="canary"
            )
        results = [got.get(timeout=WAIT) for _ in rows]
    finally:
        stream.stop_stream(cancel_requests=True)
        stream.close()
    assert [r.as_numpy("OUTPUT0").ravel().tolist() for r in results] == [
        servers["canary"].expected(r) for r in rows
    ]
