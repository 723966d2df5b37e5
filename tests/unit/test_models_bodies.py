"""Bodies at the gateway: the head of a gRPC message the gateway sends ext_authz is enough to read what
the message asks for (the bound the compiler computes and the parser extauthz runs agree), and the
routes that bound a streamed REST body."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from tritonclient.grpc import service_pb2

from meshgate.extauthz import CheckInput
from meshgate.extauthz.target import TargetError, resolve_target
from meshgate.xds import compile_snapshot
from meshgate.xds._bodies import grpc_head_bytes
from tests.unit.test_xds_compile import routes
from tests.unit.test_xds_support import model, policy

INFER = "/inference.GRPCInferenceService/ModelInfer"


def framed(message: service_pb2.ModelInferRequest) -> bytes:
    raw = message.SerializeToString()
    return b"\x00" + len(raw).to_bytes(4, "big") + raw


def request(name: str, version: str = "") -> service_pb2.ModelInferRequest:
    """A ModelInferRequest as tritonclient builds it: a 1 MB tensor after the name and version."""
    message = service_pb2.ModelInferRequest(model_name=name, model_version=version, id="req-1")
    tensor = message.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 262_144])
    assert tensor.name == "INPUT0"
    message.raw_input_contents.append(b"\x01" * 1_048_576)
    return message


def head(body: bytes, size: int) -> CheckInput:
    return CheckInput(method="POST", path=INFER, body=body[:size])


@pytest.mark.parametrize("length", [1, 5, 60, 126, 127, 128])
@pytest.mark.parametrize("pinned", [False, True])
def test_the_head_the_gateway_sends_names_the_model_and_its_pin(length: int, pinned: bool) -> None:
    name = "m" * length
    doc = model(name, {"v1": 50, "a-much-longer-version-name": 50})
    doc["versions"][0]["backend_version"] = "7" * 64
    p = policy(doc, model("x", {"v1": 100}, port=9100))
    bound = grpc_head_bytes(p)
    for pin in ("v1", "7" * 64, "a-much-longer-version-name") if pinned else ("",):
        target = resolve_target(head(framed(request(name, pin)), bound))
        assert (target.model, target.version) == (name, pin)
    short = resolve_target(head(framed(request("x", "v1" if pinned else "")), bound))
    assert (short.model, short.version) == ("x", "v1" if pinned else "")


def test_a_head_that_stops_before_the_version_is_known_is_refused() -> None:
    body = framed(request("resnet", "v2"))
    name_only = 5 + 2 + len("resnet")  # the frame, and the whole name field: a version may follow
    with pytest.raises(TargetError) as caught:
        resolve_target(head(body, name_only))
    assert caught.value.code == "invalid_body"
    with pytest.raises(TargetError):
        resolve_target(head(body, name_only + 3))  # inside the version
    target = resolve_target(head(body, name_only + 4))  # the version ends the head
    assert (target.model, target.version) == ("resnet", "v2")
    unpinned = resolve_target(head(framed(request("resnet")), name_only + 1))  # then field 3 (id)
    assert (unpinned.model, unpinned.version) == ("resnet", "")


def test_a_name_longer_than_every_policy_name_is_refused_not_guessed() -> None:
    p = policy(model("short", {"v1": 100}))
    with pytest.raises(TargetError) as caught:
        resolve_target(head(framed(request("s" * 100)), grpc_head_bytes(p)))
    assert caught.value.code == "invalid_body"


def test_rest_routes_stream_grpc_reads_a_head_openai_keeps_the_listener_setting() -> None:
    p = policy(
        model("rest", {"v1": 100}, max_request_bytes=1000),
        model("grpc", {"v1": 100}, protocol="v2-grpc", port=9100),
        model("chat", {"v1": 100}, protocol="openai", port=9200),
    )
    settings = {}
    for route in routes(compile_snapshot(p)):
        per_route = ext_authz_pb2.ExtAuthzPerRoute()
        config = route.typed_per_filter_config.get("envoy.filters.http.ext_authz")
        if config is not None:
            assert config.Unpack(per_route)
        settings.setdefault(route.name, per_route)
    for name in ("rest|body_too_large", "rest|length_required", "rest|pin|v1"):
        assert settings[name].check_settings.disable_request_body_buffering, name
    head_settings = settings["meshgate|grpc"].check_settings.with_request_body
    assert head_settings.allow_partial_message and head_settings.pack_as_bytes
    assert head_settings.max_request_bytes == grpc_head_bytes(p)
    assert not settings["meshgate|no_route"].HasField("check_settings")  # OpenAI JSON: the whole body
    assert not settings["chat|canary"].HasField("check_settings")
    limit = next(r for r in routes(compile_snapshot(p)) if r.name == "rest|body_too_large")
    assert limit.match.headers[0].range_match.start == 1001
    assert limit.direct_response.status == 413
