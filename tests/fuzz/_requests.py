"""Strategies for the requests extauthz reads (shared by test_fuzz_extauthz and test_fuzz_target):
paths of every protocol, OpenAI JSON bodies with any values, JSON nested very deep, megabyte strings,
Triton gRPC frames whole, truncated, compressed or lying about their length."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

GRPC_PREFIX = "/inference.GRPCInferenceService/"
OPENAI_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
MODELS = ["resnet", "llama-chat", "simple", "secret-model", "nope", ""]

TEXT = st.text(max_size=30)
HUGE = st.integers(0, 1 << 20).map(lambda n: "x" * n)
NAMES = st.one_of(st.sampled_from(MODELS), TEXT)

PATHS = st.one_of(
    st.sampled_from(["/v2", "/v2/health/ready", "/v1/models", "/", "", "?", *OPENAI_PATHS]),
    st.builds(lambda m, v, tail: f"/v2/models/{m}{v}{tail}", NAMES,
              st.sampled_from(["", "/versions/v1", "/versions/v2", "/versions/"]) | TEXT.map(lambda t: f"/versions/{t}"),
              st.sampled_from(["/infer", "/ready", "", "/"]) | TEXT),
    st.builds(lambda m: GRPC_PREFIX + m, st.sampled_from(
        ["ModelInfer", "ModelStreamInfer", "ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics",
         "ServerLive", "ServerReady", "ServerMetadata", ""]) | TEXT),
    st.builds(lambda p, q: p + "?" + q, st.sampled_from([*OPENAI_PATHS, "/v2/models/resnet/infer"]), TEXT),
    TEXT,
    HUGE.map(lambda s: "/v2/models/" + s),
)  # fmt: skip


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=15,
)


@st.composite
def openai_bodies(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["model"] = draw(NAMES | JSON)
    for key in ("max_tokens", "max_completion_tokens"):
        if draw(st.booleans()):
            doc[key] = draw(st.integers(-(2**70), 2**70) | JSON)
    for key in ("messages", "prompt", "input"):
        if draw(st.booleans()):
            doc[key] = draw(JSON)
    return json.dumps(doc).encode()


def deep_json(depth: int, kind: str) -> bytes:
    inner = "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth
    return ('{"model": "llama-chat", "messages": ' + inner + "}").encode()


def grpc_frame(payload: bytes, flag: int = 0, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return bytes([flag]) + (size % (1 << 32)).to_bytes(4, "big") + payload


@st.composite
def triton_bodies(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        request = service_pb2.ModelInferRequest(model_name=draw(NAMES), model_version=draw(TEXT))
        payload = request.SerializeToString()
    else:
        payload = draw(st.binary(max_size=64))
    flag = draw(st.sampled_from([0, 0, 0, 1, 255]))
    length = draw(st.none() | st.integers(0, 1 << 32))
    return grpc_frame(payload, flag, length)[: draw(st.none() | st.integers(0, 80))]


BODIES = st.one_of(
    st.just(b""),
    st.binary(max_size=256),
    openai_bodies(),
    triton_bodies(),
    st.builds(deep_json, st.integers(1, 100_000), st.sampled_from(["list", "object"])),
    HUGE.map(lambda s: json.dumps({"model": "llama-chat", "prompt": s}).encode()),
)
