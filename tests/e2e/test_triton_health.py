"""tritonclient's server-level calls through the gateway, unchanged: live, ready, metadata over REST and
gRPC, answered by the gateway (docs/models.md); a model's own readiness and metadata from its backend.
By default they need a credential like any call; `gateway.public_server_api` opens the ones it names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.test_models_gateway import KEYS, chain_policy, start_chain
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import free_port

ACME = {"x-api-key": KEYS["acme"]}


def _chain(
    tmp_path: Path,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
    *,
    public: list[str],
) -> int:
    server = model_server_factory("demo", "v1")
    port = free_port()
    models: list[dict[str, Any]] = [
        {"name": "demo", "versions": [{"name": "v1", "endpoints": [f"127.0.0.1:{server.http_port}"]}]},
        {
            "name": "gdemo",
            "protocol": "v2-grpc",
            "versions": [{"name": "v1", "endpoints": [f"127.0.0.1:{server.grpc_port}"]}],
        },
    ]
    doc = chain_policy(port, models)
    doc["gateway"]["public_server_api"] = public
    start_chain(tmp_path, doc, meshgate_factory, envoy_factory, "health")
    return port


def test_server_live_ready_metadata_with_a_credential(
    tmp_path: Path,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    port = _chain(tmp_path, model_server_factory, meshgate_factory, envoy_factory, public=[])
    rest = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    grpc = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        assert rest.is_server_live(headers=ACME)
        assert rest.is_server_ready(headers=ACME)
        assert rest.get_server_metadata(headers=ACME)["name"] == "meshgate"
        assert rest.is_model_ready("demo", headers=ACME)  # the model's backend answers that one
        assert rest.get_model_metadata("demo", headers=ACME)["name"] == "demo"

        assert grpc.is_server_live(headers=ACME)
        assert grpc.is_server_ready(headers=ACME)
        assert grpc.get_server_metadata(headers=ACME).name == "meshgate"

        # without a credential: REST answers 401 (tritonclient reads it as not live / not ready)
        assert not rest.is_server_live()
        assert not rest.is_server_ready()
        for call in (grpc.is_server_live, grpc.is_server_ready, grpc.get_server_metadata):
            with pytest.raises(InferenceServerException) as refused:
                call()
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    finally:
        rest.close()
        grpc.close()


def test_public_server_api_needs_no_credential_for_what_it_names(
    tmp_path: Path,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    port = _chain(tmp_path, model_server_factory, meshgate_factory, envoy_factory, public=["live", "ready"])
    rest = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    grpc = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        assert rest.is_server_live() and rest.is_server_ready()
        assert grpc.is_server_live() and grpc.is_server_ready()
        with pytest.raises(InferenceServerException) as refused:
            grpc.get_server_metadata()  # not named: still needs one
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as metadata:
            rest.get_server_metadata()
        assert metadata.value.status() == "401"
        assert grpc.get_server_metadata(headers=ACME).name == "meshgate"
    finally:
        rest.close()
        grpc.close()
