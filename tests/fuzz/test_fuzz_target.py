"""Reading the model from a request (meshgate/extauthz/target.py): OpenAI JSON bodies and Triton gRPC
frames, arbitrary or nearly right. Always a Target or a TargetError with a known 400 code; the token
estimate is a non-negative integer."""

from __future__ import annotations

import json
import typing

from hypothesis import example, given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from meshgate.extauthz.request import CODES, CheckInput, Target
from meshgate.extauthz.target import TargetError, resolve_target
from tests.fuzz._requests import BODIES, GRPC_PREFIX, JSON, OPENAI_PATHS, PATHS, deep_json, grpc_frame

KINDS = typing.get_args(typing.get_type_hints(Target)["kind"])  # the Literal Target.kind is declared with
TRITON_METHODS = [
    "ModelInfer",
    "ModelStreamInfer",
    "ModelReady",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
]


def resolve(path: str, body: bytes) -> Target | TargetError:
    try:
        target = resolve_target(CheckInput(method="POST", path=path, body=body))
    except TargetError as exc:
        assert CODES.get(exc.code) == 400, exc.code
        assert exc.message
        return exc
    assert target.kind in KINDS
    assert isinstance(target.tokens, int) and target.tokens >= 0
    return target


OPENAI_DOCS = st.dictionaries(
    st.sampled_from(["model", "max_tokens", "max_completion_tokens", "messages", "prompt", "input", "x"]),
    JSON | st.integers(-(2**80), 2**80),
    max_size=5,
)


@given(path=st.sampled_from(OPENAI_PATHS), doc=OPENAI_DOCS)
@example(path="/v1/chat/completions", doc={"model": "m", "max_tokens": True})
@example(path="/v1/chat/completions", doc={"model": "m", "messages": [{"content": [{"text": "x"}]}]})
def test_openai_json(path: str, doc: dict[str, object]) -> None:
    resolve(path, json.dumps(doc).encode())


@given(path=st.sampled_from(OPENAI_PATHS), body=BODIES)
@example(path="/v1/completions", body=deep_json(200_000, "list"))
@example(path="/v1/completions", body=deep_json(200_000, "object"))
@example(path="/v1/completions", body=b'{"model": "m", "max_tokens": 1e999}')
@example(path="/v1/completions", body=b'{"model": "m", "max_tokens": NaN}')
@example(path="/v1/completions", body=b"\xff\xfe")
@example(path="/v1/completions", body=b'{"model": "\\ud800"}')
def test_openai_any_body(path: str, body: bytes) -> None:
    resolve(path, body)


@given(
    method=st.sampled_from(TRITON_METHODS),
    name=st.text(max_size=40),
    version=st.text(max_size=10),
    junk=st.binary(max_size=32),
    flag=st.sampled_from([0, 0, 1]),
    length_delta=st.integers(-8, 8),
)
def test_triton_frames(
    method: str, name: str, version: str, junk: bytes, flag: int, length_delta: int
) -> None:
    payload = service_pb2.ModelInferRequest(model_name=name, model_version=version).SerializeToString() + junk
    body = grpc_frame(payload, flag, max(0, len(payload) + length_delta))
    resolve(GRPC_PREFIX + method, body)


@given(path=PATHS, body=BODIES)
def test_any_path_and_body(path: str, body: bytes) -> None:
    resolve(path, body)
