"""The matcher tree of meshgate/xds/_route_tree.py picks, on a real Envoy, the route Envoy's linear list
of the same routes picks, for every request of a corpus (models whose names prefix each other, pins,
A/B, OpenAI, gRPC, two-protocol, private, native fast copies, server calls, paths naming no model).

One Envoy, two listeners: `linear` serves the routes as a list (`flat_routes`), `tree` as the tree
(`virtual_host`); every route answers with its own name in a response header. Requests carry
x-meshgate-model only as the decision sets it: the model the path names, or any with a path naming none.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from google.protobuf import json_format

from meshgate import contract
from meshgate.policy import parse_policy
from meshgate.xds._route_tree import TREE_MIN_MODELS, flat_routes, tree_routes, virtual_host
from meshgate.xds._routes import route_configuration
from meshgate.xds.bootstrap import RUNTIME
from tests.harness import bootstraps as b
from tests.harness.envoy import Envoy
from tests.unit.test_extauthz_support import policy_doc

ROUTE_HEADER = "x-test-route"
GRPC = "application/grpc"
ENDPOINT = ["127.0.0.1:9"]


def _doc() -> dict[str, Any]:
    doc = policy_doc()
    doc["gateway"] = {"port": 8080, "enforcement": "auto"}  # native fast copies and the ext_authz routes
    doc["roles"] = [
        {"name": "invoker", "models": ["*"]},
        {"name": "pinned", "models": ["llama"], "versions": ["v1"]},
    ]
    doc["api_keys"] = [k for k in doc["api_keys"] if k["roles"] == ["invoker"]]
    doc["models"] = [
        {"name": "llama", "max_request_bytes": 100, "ab": [{"header": "x-exp", "value": "b", "version": "v2"}], "versions": [
            {"name": "v1", "weight": 80, "endpoints": ENDPOINT, "backend_version": "1"},
            {"name": "v2", "weight": 20, "endpoints": ENDPOINT}]},
        {"name": "llama-2", "versions": [{"name": "v1", "endpoints": ENDPOINT}]},
        {"name": "chat", "protocol": "openai", "versions": [{"name": "v1", "endpoints": ENDPOINT}]},
        {"name": "det", "protocol": "v2-grpc", "versions": [{"name": "1", "endpoints": ENDPOINT}]},
        {"name": "both", "protocols": ["v2-rest", "v2-grpc"], "versions": [
            {"name": "1", "endpoints": ENDPOINT, "grpc_endpoints": ENDPOINT}]},
        {"name": "vault", "visibility": "private", "owner": "acme", "versions": [{"name": "v1", "endpoints": ENDPOINT}]},
    ]  # fmt: skip
    return doc


def _tagged(route: rc.Route) -> rc.Route:
    """`route` answering with its name, itself (a direct 200 where it had an upstream), without per-filter
    configs: the choice of a route depends on its match alone."""
    route = copy.deepcopy(route)
    route.ClearField("typed_per_filter_config")
    if route.HasField("route"):
        route.direct_response.status = 200
    added = route.response_headers_to_add.add()
    added.header.key, added.header.value = ROUTE_HEADER, route.name
    added.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    return route


def _hosts() -> tuple[rc.VirtualHost, rc.VirtualHost]:
    """(the linear host, the tree host) of the same tagged routes."""
    import yaml

    compiled = route_configuration(parse_policy(yaml.safe_dump(_doc()))).virtual_hosts[0]
    assert compiled.HasField("matcher"), "the policy has enough models for the tree"
    models, no_model = tree_routes(compiled)
    per_model = [(model, [_tagged(r) for r in routes]) for model, routes in models]
    tree = virtual_host("tree", per_model, [_tagged(r) for r in no_model])
    linear = rc.VirtualHost(name="linear", domains=["*"], routes=flat_routes(tree))
    assert len(per_model) >= TREE_MIN_MODELS and tree.HasField("matcher") and not linear.HasField("matcher")
    return linear, tree


def _listener(name: str, host: rc.VirtualHost) -> dict[str, Any]:
    listener = b.hcm_listener(name, [])
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    vhost = json.loads(json_format.MessageToJson(host, preserving_proto_field_name=True))
    hcm["route_config"]["virtual_hosts"] = [vhost]
    return listener


Request = tuple[str, str, dict[str, str], bytes | None]
"""(method, path, headers, body); a body of None: a POST sent chunked, without Content-Length."""


def _requests() -> Iterator[Request]:
    """Each model's paths with and without its header, and paths naming none."""
    models = ["llama", "llama-2", "chat", "det", "both", "vault"]
    for m in models:
        paths = [f"/v2/models/{m}", f"/v2/models/{m}/infer", f"/v2/models/{m}?q=1", f"/v2/models/{m}/ready",
                 f"/v2/models/{m}/versions", f"/v2/models/{m}/versions/v1/infer", f"/v2/models/{m}/versions/1",
                 f"/v2/models/{m}/versions/v2/infer", f"/v2/models/{m}/versions/x/infer"]  # fmt: skip
        for path in paths:
            yield "GET", path, {}, b""
            yield "POST", path, {}, b"{}"
            yield "POST", path, {}, b"x" * 200  # over llama's max_request_bytes
            yield "POST", path, {}, None
            yield "GET", path, {contract.MODEL_HEADER: m}, b""
            yield "GET", path, {contract.MODEL_HEADER: m, "x-exp": "b"}, b""
            yield "GET", path, {"x-exp": "b"}, b""
        for path in ("/", "/v1/chat/completions", "/inference.GRPCInferenceService/ModelInfer",
                     "/inference.GRPCInferenceService/ModelStreamInfer", "/v1/models", "/elsewhere"):  # fmt: skip
            yield "GET", path, {contract.MODEL_HEADER: m}, b""
            yield "POST", path, {contract.MODEL_HEADER: m, "content-type": GRPC}, b"12345"
            yield (
                "POST",
                path,
                {contract.MODEL_HEADER: m, contract.VERSION_HEADER: "1", "content-type": GRPC},
                b"",
            )
            yield "GET", path, {contract.MODEL_HEADER: m, contract.VERSION_HEADER: "v2"}, b""
    for path in ("/", "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models", "/v2/models/",
                 "/v2/models/llama-", "/v2/models/llama-3/infer", "/v2/models/llamas", "/v2/models/llama-2x",
                 "/v2/models/chatx/infer", "/v1/chat/completions", "/v1/models", "/v1/models/chat",
                 "/inference.GRPCInferenceService/ServerReady", "/inference.GRPCInferenceService/ModelInfer",
                 "/V2/MODELS/LLAMA/infer", "/v2/models//llama"):  # fmt: skip
        yield "GET", path, {}, b""
        yield "POST", path, {"content-type": GRPC}, b"12345"


def _chunked() -> Iterator[bytes]:
    yield b"{}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    linear, tree = _hosts()
    listeners = [_listener("linear", linear), _listener("tree", tree)]
    boot = b.bootstrap(listeners, [], layered_runtime=RUNTIME)
    envoy = Envoy(boot, workdir=Path(tmp_path_factory.mktemp("route-tree")), name="route-tree")
    try:
        envoy.start()
        yield {"linear": envoy.listener_port("linear"), "tree": envoy.listener_port("tree")}
    finally:
        envoy.stop()


def test_the_tree_picks_the_route_the_list_picks(gateway: dict[str, int]) -> None:
    picked: dict[str, int] = {}
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        for method, path, headers, body in _requests():
            answers = []
            for name in ("linear", "tree"):
                url = f"http://127.0.0.1:{gateway[name]}{path}"
                content = _chunked() if body is None else body
                response = client.request(method, url, headers=headers, content=content)
                answers.append((response.status_code, response.headers.get(ROUTE_HEADER)))
            assert answers[0] == answers[1], (method, path, headers)
            picked[str(answers[0][1])] = picked.get(str(answers[0][1]), 0) + 1
    # the corpus reaches the routes that matter, so equal answers mean something
    for name in ("llama|canary", "llama|ab|x-exp=b", "llama|pin|v1", "llama|body_too_large", "llama|length_required",
                 "llama-2|canary", "chat|canary", "det|canary", "det|stream_forbidden", "both|canary",
                 "both|grpc|canary", "vault|canary", "meshgate|no_route", "meshgate|server|live"):  # fmt: skip
        assert picked.get(name), (name, sorted(picked))
