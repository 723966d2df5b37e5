"""Inference through the gateway with the whole meshgate chain in front (Envoy fed only by meshgate's
ADS: ext_authz -> ratelimit -> routes): tritonclient REST and gRPC to real KServe demo models, and
OpenAI-style `/v1/chat/completions` to a small OpenAI-compatible backend; allowed and denied.

Every meshgate port is ephemeral: `meshgate serve` binds them before compiling, so the xDS it serves
points Envoy at the real extauthz / ratelimit ports.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from tritonclient.utils import InferenceServerException

from meshgate.xds.bootstrap import envoy_bootstrap
from tests.e2e.test_extauthz_e2e import LocalHTTP
from tests.harness.envoy import Envoy
from tests.harness.http import ThreadedHTTP
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import free_port
from tests.unit.test_extauthz_support import AUDIENCE, ISSUER, mint, public_jwks, sha256

KEYS = {"acme": "e2e-key-acme", "globex": "e2e-key-globex"}
ROLES = {"acme": "invoker", "globex": "other-only"}


def chain_policy(port: int, models: list[dict[str, Any]], *, jwks_port: int | None = None) -> dict[str, Any]:
    """acme may call every model (role invoker), globex only `other`; a request quota for both tenants
    so the ratelimit filter really runs on every request."""
    issuers = []
    if jwks_port is not None:
        issuers.append(
            {
                "name": "local",
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256"],
                "jwks_uri": f"http://127.0.0.1:{jwks_port}/jwks.json",
            }
        )
    return {
        "version": 1,
        "gateway": {"port": port},
        "auth": {"api_key_header": "x-api-key"},
        "issuers": issuers,
        "api_keys": [
            {"id": f"{t}-key", "tenant": t, "roles": [ROLES[t]], "sha256": sha256(k)} for t, k in KEYS.items()
        ],
        "tenants": [{"name": t, "quotas": ["rpm"]} for t in KEYS],
        "roles": [{"name": "invoker", "models": ["*"]}, {"name": "other-only", "models": ["other"]}],
        "models": [
            *models,
            # globex's only model: never called here, so nobody listens and nothing probes it
            {
                "name": "other",
                "health_check": {"enabled": False},
                "versions": [{"name": "v1", "endpoints": [f"127.0.0.1:{free_port()}"]}],
            },
        ],
        "quotas": [{"name": "rpm", "per": ["tenant"], "limit": 1000, "window": "minute"}],
    }


def start_chain(
    tmp_path: Path,
    doc: dict[str, Any],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
    node: str,
) -> Envoy:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(doc, sort_keys=False))
    meshgate = meshgate_factory(policy)  # extauthz + ratelimit filters on (the default)
    return envoy_factory(envoy_bootstrap(node, xds=meshgate.address("xds")))


# --- tritonclient REST and gRPC -----------------------------------------------------------------------


@pytest.fixture
def jwks() -> Iterator[LocalHTTP]:
    with LocalHTTP(public_jwks()) as server:
        yield server


def rest_infer(port: int, model: str, headers: dict[str, str]) -> httpclient.InferResult:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        tensor = httpclient.InferInput("INPUT0", [1, 3], "INT32")
        tensor.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.int32))
        return client.infer(model, [tensor], headers=dict(headers))  # the clients add to it
    finally:
        client.close()


def grpc_infer(port: int, model: str, headers: dict[str, str]) -> grpcclient.InferResult:
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        tensor = grpcclient.InferInput("INPUT0", [1, 3], "INT32")
        tensor.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.int32))
        return client.infer(model, [tensor], headers=dict(headers))  # the clients add to it
    finally:
        client.close()


def test_tritonclient_rest_and_grpc_allowed_and_denied(
    tmp_path: Path,
    jwks: LocalHTTP,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    rest = model_server_factory("demo", "v1", wait=False)
    grpc_model = model_server_factory("gdemo", "v2", wait=False)
    for server in (rest, grpc_model):
        server.wait_ready()
    port = free_port()
    models = [
        {"name": "demo", "versions": [{"name": "v1", "endpoints": [f"127.0.0.1:{rest.http_port}"]}]},
        {
            "name": "gdemo",
            "protocol": "v2-grpc",
            "versions": [{"name": "v2", "endpoints": [f"127.0.0.1:{grpc_model.grpc_port}"]}],
        },
    ]
    envoy = start_chain(
        tmp_path, chain_policy(port, models, jwks_port=jwks.port), meshgate_factory, envoy_factory, "chain"
    )
    acme = {"x-api-key": KEYS["acme"]}
    globex = {"x-api-key": KEYS["globex"]}
    acme_jwt = {"authorization": f"Bearer {mint(tenant='acme', roles=['invoker'])}"}
    globex_jwt = {"authorization": f"Bearer {mint(tenant='globex', roles=['other-only'])}"}

    # REST, allowed: the model's answer, with extauthz's identity headers echoed by the demo model
    for headers, user in ((acme, "acme-key"), (acme_jwt, "alice")):
        result = rest_infer(port, "demo", headers)
        assert result.as_numpy("OUTPUT0").ravel().tolist() == rest.expected([1, 2, 3])
        params = result.get_response()["parameters"]
        assert params["echo.x-meshgate-tenant"] == "acme"
        assert params["echo.x-meshgate-user"] == user
    # REST, denied: a tenant whose role does not grant the model
    for headers in (globex, globex_jwt):
        with pytest.raises(InferenceServerException) as denied:
            rest_infer(port, "demo", headers)
        assert denied.value.status() == "403"
        assert "role_forbidden" in str(denied.value)

    # gRPC ModelInfer, allowed: the model comes from the protobuf body, the route from x-meshgate-model
    for headers in (acme, acme_jwt):
        answer = grpc_infer(port, "gdemo", headers)
        assert answer.as_numpy("OUTPUT0").ravel().tolist() == grpc_model.expected([1, 2, 3])
        assert answer.get_response().model_version == "v2"
    # gRPC, denied: Envoy turns extauthz's 403 into the gRPC status PERMISSION_DENIED
    for headers in (globex, globex_jwt):
        with pytest.raises(InferenceServerException) as denied:
            grpc_infer(port, "gdemo", headers)
        assert denied.value.status() == "StatusCode.PERMISSION_DENIED"
        assert "role_forbidden" in str(denied.value)
    with pytest.raises(InferenceServerException) as anonymous:
        grpc_infer(port, "gdemo", {})
    assert anonymous.value.status() == "StatusCode.UNAUTHENTICATED"

    # the whole chain ran: every request was checked, the allowed ones were rate limited
    assert envoy.stat("http.gateway.ext_authz.ok") >= 4
    assert envoy.stat("http.gateway.ext_authz.denied") >= 5
    assert envoy.stat("cluster.meshgate|ratelimit.upstream_rq_total") >= 4


# --- OpenAI-style chat completions --------------------------------------------------------------------


class ChatBackend(ThreadedHTTP):
    """A tiny OpenAI-compatible backend (stdlib http.server in a thread). KServe's OpenAI endpoints need
    a generative model that cannot be loaded here, so this stands in: GET /v1/models (the probe) and
    POST /v1/chat/completions answering with usage tokens, its own name, and the x-meshgate-* headers."""

    def __init__(self, name: str) -> None:
        backend = name

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": backend, "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": "not found"})
                    return
                prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4 + 1
                completion = min(int(body.get("max_tokens") or 16), 16)
                usage = {"prompt_tokens": prompt, "completion_tokens": completion}
                usage["total_tokens"] = prompt + completion
                answer = {
                    "id": "chatcmpl-e2e",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "backend": backend,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"hello from {backend}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                    "headers": {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-")},
                }
                self._send(200, answer, usage_tokens=usage["total_tokens"])

            def _send(self, status: int, payload: dict[str, Any], *, usage_tokens: int | None = None) -> None:
                out = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                if usage_tokens is not None:
                    self.send_header("x-meshgate-usage-tokens", str(usage_tokens))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(Handler, name=f"chat-{name}")


@pytest.fixture
def chat_backends() -> Iterator[dict[str, ChatBackend]]:
    with ChatBackend("small") as small, ChatBackend("private") as private:
        yield {"small": small, "private": private}


def test_openai_chat_completions_model_from_the_body(
    tmp_path: Path,
    chat_backends: dict[str, ChatBackend],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    port = free_port()

    def openai_model(name: str, backend: str, **extra: Any) -> dict[str, Any]:
        endpoint = f"127.0.0.1:{chat_backends[backend].port}"
        return {
            "name": name,
            "protocol": "openai",
            "versions": [{"name": "v1", "endpoints": [endpoint]}],
            **extra,
        }

    models = [
        openai_model("chat-small", "small", context_limit_tokens=100),
        openai_model("acme-private", "private", visibility="private", owner="acme"),
    ]
    doc = chain_policy(port, models)
    doc["roles"][1]["models"] = ["other", "chat-small", "acme-private"]  # globex's role names both
    envoy = start_chain(tmp_path, doc, meshgate_factory, envoy_factory, "chat")

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0, trust_env=False) as client:

        def chat(model: str, tenant: str, **extra: Any) -> httpx.Response:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
            return client.post("/v1/chat/completions", json=body, headers={"x-api-key": KEYS[tenant]})

        # the model is read from the JSON body, and the route follows x-meshgate-model
        for model, backend in (("chat-small", "small"), ("acme-private", "private")):
            answer = chat(model, "acme", max_tokens=8)
            assert answer.status_code == 200, answer.text
            data = answer.json()
            assert data["backend"] == backend
            assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + 8
            assert data["headers"]["x-meshgate-model"] == model
            assert data["headers"]["x-meshgate-tenant"] == "acme"

        # another tenant's private model: 403, the same answer as an unknown model
        forbidden = chat("acme-private", "globex")
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "model_forbidden"
        assert chat("no-such-model", "globex").json()["error"]["code"] == "model_forbidden"
        # a public model for globex works
        assert chat("chat-small", "globex", max_tokens=8).status_code == 200

        # token context limit (100): max_tokens above it -> 400, prompt + max_tokens above it -> 413
        too_many = chat("chat-small", "acme", max_tokens=101)
        assert too_many.status_code == 400
        assert too_many.json()["error"]["code"] == "max_tokens_exceeds_context"
        long_prompt = chat(
            "chat-small", "acme", max_tokens=90, messages=[{"role": "user", "content": "x" * 200}]
        )
        assert long_prompt.status_code == 413
        assert long_prompt.json()["error"]["code"] == "context_limit_exceeded"

    assert envoy.stat("cluster.meshgate|ratelimit.upstream_rq_total") >= 3
