"""extauthz through a real Envoy: ext_authz filter (with_request_body, pack_as_bytes, clear_route_cache) in
front of an upstream that echoes the headers it got, keys served by a local JWKS HTTP server, and the demo
KServe model for Triton gRPC ModelInfer."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.harness import bootstraps as b
from tests.harness.envoy import Envoy
from tests.harness.http import ThreadedHTTP
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import free_port
from tests.unit.test_extauthz_support import API_KEY, mint, policy_doc, public_jwks

_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"


class LocalHTTP(ThreadedHTTP):
    """A tiny HTTP/1.1 server in a thread: GET /jwks.json serves keys; anything else echoes the request."""

    def __init__(self, jwks: Mapping[str, Any] | None = None) -> None:
        jwks_body = json.dumps(jwks or {}).encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path == "/jwks.json":
                    out, ctype = jwks_body, "application/json"
                else:
                    echo = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body_bytes": len(body)}  # fmt: skip
                    out, ctype = json.dumps(echo).encode(), "application/json"
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("cache-control", "max-age=300")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(Handler, name="local-http")


def ext_authz_filter(*, timeout: str = "2s") -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": _EXT_AUTHZ,
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": "extauthz"}, "timeout": timeout},
            "failure_mode_allow": False,
            "with_request_body": {
                "max_request_bytes": 1048576,
                "allow_partial_message": False,
                "pack_as_bytes": True,
            },
            "clear_route_cache": True,
        },
    }


def gateway_bootstrap(extauthz_port: int, echo_port: int, grpc_port: int | None = None) -> dict[str, Any]:
    routes = [b.route("/", "echo")]
    clusters = [b.static_cluster("extauthz", "127.0.0.1", extauthz_port, http2=True),
                b.static_cluster("echo", "127.0.0.1", echo_port)]  # fmt: skip
    if grpc_port is not None:
        routes.insert(0, b.route(b.GRPC_INFERENCE_PREFIX, "model_grpc"))
        clusters.append(b.static_cluster("model_grpc", "127.0.0.1", grpc_port, http2=True))
    return b.bootstrap([b.hcm_listener("ingress", routes, http_filters=[ext_authz_filter()])], clusters)


def e2e_policy(jwks_port: int) -> dict[str, Any]:
    doc = policy_doc(issuer={"jwks_uri": f"http://127.0.0.1:{jwks_port}/jwks.json"})
    doc["models"].append({"name": "demo", "protocol": "v2-grpc", "versions": [
        {"name": "1", "endpoints": ["127.0.0.1:9401"]}]})  # fmt: skip
    return doc


@pytest.fixture
def local_http() -> Iterator[LocalHTTP]:
    with LocalHTTP(public_jwks()) as server:
        yield server


@pytest.fixture
def gateway(
    local_http: LocalHTTP, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy]
) -> tuple[Envoy, str]:
    meshgate = meshgate_factory(e2e_policy(local_http.port))
    envoy = envoy_factory(gateway_bootstrap(meshgate.ports["extauthz"], local_http.port))
    return envoy, f"http://127.0.0.1:{envoy.listener_port('ingress')}"


def request(
    url: str, method: str = "POST", *, headers: Mapping[str, str], body: bytes = b""
) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=15.0) as client:
        return client.request(method, url, headers=dict(headers), content=body)


def test_envoy_runs_the_ext_authz_filter(gateway: tuple[Envoy, str]) -> None:
    envoy, _ = gateway
    dump = json.dumps(envoy.config_dump(resource="static_listeners"))
    assert "envoy.filters.http.ext_authz" in dump and '"pack_as_bytes": true' in dump


def test_allowed_tenant_reaches_the_model_with_identity_headers(gateway: tuple[Envoy, str]) -> None:
    _, base = gateway
    token = mint()
    got = request(f"{base}/v2/models/resnet/infer", headers={
        "authorization": f"Bearer {token}", "x-meshgate-tenant": "victim", "x-meshgate-user": "root",
        "x-meshgate-whatever": "1",
    }, body=b'{"inputs": []}')  # fmt: skip
    assert got.status_code == 200, got.text
    seen = got.json()["headers"]
    assert seen["x-meshgate-tenant"] == "acme"
    assert seen["x-meshgate-user"] == "alice"
    assert seen["x-meshgate-tier"] == "gold"
    assert seen["x-meshgate-model"] == "resnet"
    assert "x-meshgate-whatever" not in seen
    assert "authorization" not in seen  # auth.forward_authorization is false


def test_client_sent_tenant_header_never_reaches_upstream(gateway: tuple[Envoy, str]) -> None:
    _, base = gateway
    got = request(
        f"{base}/v2/models/resnet/infer", headers={"x-api-key": API_KEY, "x-meshgate-tenant": "victim"}
    )
    assert got.status_code == 200, got.text
    seen = got.json()["headers"]
    assert seen["x-meshgate-tenant"] == "acme"
    assert list(seen.values()).count("victim") == 0
    assert "x-api-key" not in seen


def test_openai_body_model_and_private_model_of_another_tenant(gateway: tuple[Envoy, str]) -> None:
    _, base = gateway
    body = json.dumps(
        {"model": "llama-chat", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    )
    mine = request(
        f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {mint()}"}, body=body.encode()
    )
    assert mine.status_code == 200, mine.text
    assert mine.json()["headers"]["x-meshgate-model"] == "llama-chat"
    assert mine.json()["body_bytes"] == len(body)
    theirs = request(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {mint(tenant='globex')}"},
                     body=body.encode())  # fmt: skip
    assert theirs.status_code == 403
    assert theirs.json()["error"]["code"] == "model_forbidden"  # OpenAI's shape under /v1/
    too_long = json.dumps({"model": "llama-chat", "max_tokens": 100000}).encode()
    limited = request(
        f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {mint()}"}, body=too_long
    )
    assert limited.status_code == 400
    assert limited.json()["error"]["code"] == "max_tokens_exceeds_context"


def test_no_token_is_401_with_www_authenticate(gateway: tuple[Envoy, str]) -> None:
    _, base = gateway
    got = request(f"{base}/v2/models/resnet/infer", headers={"x-meshgate-tenant": "acme"})
    assert got.status_code == 401
    assert got.headers["www-authenticate"].startswith('Bearer realm="meshgate"')
    assert got.json()["error"] == "missing_credentials"
    forged = request(f"{base}/v2/models/resnet/infer", headers={"authorization": f"Bearer {mint(aud='x')}"})
    assert forged.status_code == 401
    assert forged.json()["error"] == "token_wrong_audience"


def infer_grpc(address: str, model: str, headers: Mapping[str, str]) -> Any:
    client = grpcclient.InferenceServerClient(url=address)
    try:
        tensor = grpcclient.InferInput("INPUT0", [1, 3], "INT32")
        tensor.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.int32))
        return client.infer(model, [tensor], headers=dict(headers))
    finally:
        client.close()


def test_triton_grpc_model_infer_for_a_forbidden_model_is_denied(
    local_http: LocalHTTP, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy]
) -> None:
    """Denied calls never reach the upstream, so its port may be closed: no model server needed."""
    meshgate = meshgate_factory(e2e_policy(local_http.port))
    envoy = envoy_factory(gateway_bootstrap(meshgate.ports["extauthz"], local_http.port, free_port()))
    address = f"127.0.0.1:{envoy.listener_port('ingress')}"
    with pytest.raises(InferenceServerException) as forbidden:
        infer_grpc(address, "secret-model", {"authorization": f"Bearer {mint(tenant='globex')}"})
    assert forbidden.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "model_forbidden" in str(forbidden.value)
    with pytest.raises(InferenceServerException) as anonymous:
        infer_grpc(address, "demo", {})
    assert anonymous.value.status() == "StatusCode.UNAUTHENTICATED"
    assert "missing_credentials" in str(anonymous.value)
    assert envoy.stat("cluster.model_grpc.upstream_rq_total") == 0


def test_triton_grpc_model_infer_for_an_allowed_model_reaches_it(
    local_http: LocalHTTP,
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
    model_server_factory: Callable[..., ModelServer],
) -> None:
    model = model_server_factory("demo", "1", wait=False)
    meshgate = meshgate_factory(e2e_policy(local_http.port))
    model.wait_ready()
    envoy = envoy_factory(gateway_bootstrap(meshgate.ports["extauthz"], local_http.port, model.grpc_port))
    address = f"127.0.0.1:{envoy.listener_port('ingress')}"
    result = infer_grpc(address, "demo", {"authorization": f"Bearer {mint()}", "x-meshgate-tenant": "victim"})
    assert result.as_numpy("OUTPUT0").ravel().tolist() == model.expected([1, 2, 3])
    params = result.get_response().parameters
    assert params["echo.x-meshgate-tenant"].string_param == "acme"
    assert params["echo.x-meshgate-model"].string_param == "demo"
