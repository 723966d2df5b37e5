"""Model resolution from REST paths, gRPC ModelInfer bodies (5-byte frame) and OpenAI JSON bodies."""

from __future__ import annotations

import json

import pytest
from tritonclient.grpc import service_pb2

from meshgate.extauthz import CheckInput, Target
from meshgate.extauthz.target import TargetError, resolve_target

INFER = "/inference.GRPCInferenceService/ModelInfer"


def framed(message: bytes, *, flag: int = 0) -> bytes:
    return bytes([flag]) + len(message).to_bytes(4, "big") + message


def infer_body(name: str, version: str = "") -> bytes:
    return framed(
        service_pb2.ModelInferRequest(model_name=name, model_version=version, id="r1").SerializeToString()
    )


def resolve(path: str, body: bytes = b"", method: str = "POST") -> Target:
    return resolve_target(CheckInput(method=method, path=path, body=body))


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v2/models/resnet/infer", b"", Target(kind="model", model="resnet")),
        ("/v2/models/resnet", b"", Target(kind="model", model="resnet")),
        ("/v2/models/resnet/ready?x=1", b"", Target(kind="model", model="resnet")),
        ("/v2/models/resnet/versions/v2/infer", b"", Target(kind="model", model="resnet", version="v2")),
        ("/v2/health/ready", b"", Target(kind="server")),
        (INFER, infer_body("simple"), Target(kind="model", model="simple")),
        (INFER, infer_body("simple", "1"), Target(kind="model", model="simple", version="1")),
        ("/inference.GRPCInferenceService/ModelReady",
         framed(service_pb2.ModelReadyRequest(name="simple", version="1").SerializeToString()),
         Target(kind="model", model="simple", version="1")),
        ("/inference.GRPCInferenceService/ServerLive", b"", Target(kind="server")),
        ("/v1/chat/completions", json.dumps({"model": "llama", "max_tokens": 10}).encode(),
         Target(kind="model", model="llama", tokens=10, max_tokens=10)),
        ("/v1/completions", json.dumps({"model": "llama", "prompt": "abcdefgh"}).encode(),
         Target(kind="model", model="llama", tokens=2)),
    ],
)  # fmt: skip
def test_resolves(path: str, body: bytes, expected: Target) -> None:
    assert resolve(path, body) == expected


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        (INFER, b"", "invalid_body"),
        (INFER, framed(b"\xff\xff\xff"), "invalid_body"),
        (INFER, framed(b"x", flag=1), "invalid_body"),
        (INFER, infer_body("simple")[:9], "invalid_body"),  # a head that ends inside the name
        (INFER, framed(b""), "model_unresolved"),
        ("/inference.GRPCInferenceService/RepositoryModelLoad", b"", "model_unresolved"),
        ("/v1/chat/completions", b"[1]", "invalid_body"),
        ("/v1/chat/completions", b'{"model": "m", "max_tokens": -1}', "invalid_body"),
        ("/v1/chat/completions", b'{"model": "m", "max_tokens": true}', "invalid_body"),
        ("/v1/chat/completions", b'{"model": 3}', "model_unresolved"),
        ("/somewhere", b"", "model_unresolved"),
    ],
)
def test_refuses(path: str, body: bytes, code: str) -> None:
    with pytest.raises(TargetError) as caught:
        resolve(path, body)
    assert caught.value.code == code


def test_header_never_chooses_the_model() -> None:
    req = CheckInput(
        method="POST", path="/v2/models/resnet/infer", headers={"x-meshgate-model": "llama-chat"}
    )
    assert resolve_target(req).model == "resnet"
