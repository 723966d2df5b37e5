"""Which model a request wants, read from the request itself, never from a client-chosen header.

- KServe / Open Inference Protocol REST: /v2/models/{name}[/versions/{v}]/...
- Triton / KServe gRPC: /inference.GRPCInferenceService/{Method}; the body (sent by Envoy with
  with_request_body + pack_as_bytes) is one length-prefixed gRPC message: 1 flag byte, 4 length bytes.
- OpenAI-style JSON: POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses (and
  the same under /openai/v1/, where KServe's Hugging Face runtime serves them) with "model" and
  "max_tokens" (or max_completion_tokens, max_output_tokens) in the body; the prompt is counted by
  `prompt.py`. An embedding generates nothing: it asks for its input only.
- OpenAI's model list: GET /v1/models (and /v1/models/{model}): kind "models", answered by extauthz.
Server-level endpoints (health, server metadata) have no model: kind "server".

This runs before the credential is checked (the target is part of the decision cache's key), so what it
keeps of a request is bounded: the path memo in bytes (`PATHS`), and a JSON body nested too deep for the
parser is a 400 `invalid_body`, never an exception.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Container
from typing import Any

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2

from meshgate import contract

from .bounds import PATH_MEMO_BYTES, PATH_MEMO_ENTRY_BYTES, clip
from .cache import BoundedMemo, target_bytes
from .prompt import estimate_tokens, prompt_texts
from .request import CheckInput, Target

__all__ = [
    "GRPC_PREFIX",
    "MODEL_LISTS",
    "OPENAI_PREFIXES",
    "PATHS",
    "SERVER_PATHS",
    "TargetError",
    "resolve_target",
]

_V2_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/.*)?$")
SERVER_PATHS = frozenset({"/v2", "/v2/", "/v2/health/live", "/v2/health/ready"})
GRPC_PREFIX = "/inference.GRPCInferenceService/"
_GRPC_SERVER_METHODS = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})
# methods whose request names a model: message type and its (name field, version field)
_GRPC_MODEL_METHODS: dict[str, tuple[Any, str, str]] = {
    "ModelInfer": (service_pb2.ModelInferRequest, "model_name", "model_version"),
    "ModelStreamInfer": (service_pb2.ModelInferRequest, "model_name", "model_version"),
    "ModelReady": (service_pb2.ModelReadyRequest, "name", "version"),
    "ModelMetadata": (service_pb2.ModelMetadataRequest, "name", "version"),
    "ModelConfig": (service_pb2.ModelConfigRequest, "name", "version"),
    "ModelStatistics": (service_pb2.ModelStatisticsRequest, "name", "version"),
}
OPENAI_PREFIXES = contract.OPENAI_PREFIXES  # every answer under them is in OpenAI's shape (responses.py)
# OpenAI endpoints whose body names the model -> whether they generate (an embedding does not)
_OPENAI_ENDPOINTS = {"chat/completions": True, "completions": True, "responses": True, "embeddings": False}
_OPENAI_PATHS = {
    prefix + endpoint: generates
    for prefix in OPENAI_PREFIXES
    for endpoint, generates in _OPENAI_ENDPOINTS.items()
}
MODEL_LISTS = contract.MODEL_LISTS
_MAX_TOKENS_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_NO_TARGET = Target(kind="server", model="\x00")  # memoized "this path names no target" (never returned)
PATHS: BoundedMemo[str, Target] = BoundedMemo(PATH_MEMO_BYTES, max_entry_bytes=PATH_MEMO_ENTRY_BYTES)
"""Path -> target, for paths that alone name it: the same few paths come again and again, and a Target
is immutable. A path is client-chosen and read before authentication: the memo is bounded in bytes,
and a long path (an entry over PATH_MEMO_ENTRY_BYTES) is resolved each time, never kept."""


class TargetError(Exception):
    """The request does not say which model it wants, or says it badly. `code` is a Decision code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def resolve_target(req: CheckInput, tokenized: Container[str] = ()) -> Target:
    """The request's target. `tokenized`: the models whose own tokenizer counts the prompt (their
    target keeps the prompt's strings for the core to count once the caller is authenticated)."""
    path = req.path.split("?", 1)[0]
    if path.startswith(GRPC_PREFIX):
        return _grpc(path[len(GRPC_PREFIX) :], req.body)
    generates = _OPENAI_PATHS.get(path)
    if generates is not None:
        return _openai(req.body, generates=generates, tokenized=tokenized)
    target = PATHS.get(path)
    if target is None:
        target = _path_target(path)
        PATHS.put(path, target, sys.getsizeof(path) + target_bytes(target))
    if target is _NO_TARGET:
        raise TargetError("model_unresolved", f"no model can be read from {clip(req.method)} {clip(path)}")
    return target


def _path_target(path: str) -> Target:
    """The target of a path that alone names it (KServe REST, server level), else _NO_TARGET."""
    match = _V2_MODEL.match(path)
    if match:
        return Target(kind="model", model=match.group(1), version=match.group(2) or "")
    if path in SERVER_PATHS:
        return Target(kind="server")
    for prefix in MODEL_LISTS:
        if path == prefix:
            return Target(kind="models")
        if path.startswith(prefix + "/") and len(path) > len(prefix) + 1:
            return Target(kind="models", model=path[len(prefix) + 1 :])
    return _NO_TARGET


def _grpc(method: str, body: bytes) -> Target:
    if method in _GRPC_SERVER_METHODS:
        return Target(kind="server")
    spec = _GRPC_MODEL_METHODS.get(method)
    if spec is None:
        raise TargetError(
            "model_unresolved", f"gRPC method {clip(method)} is not an inference call meshgate knows"
        )
    if len(body) < 5:
        raise TargetError("invalid_body", "gRPC body missing: enable with_request_body and pack_as_bytes")
    flag, length = body[0], int.from_bytes(body[1:5], "big")
    if flag != 0:
        raise TargetError("invalid_body", "compressed gRPC messages cannot be inspected")
    kind, name_field, version_field = spec
    if len(body) < 5 + length:  # the head of a larger message (or of a stream's first): Envoy sent that
        name, version = _head(body[5:], kind.DESCRIPTOR.full_name)
    else:
        message = kind()
        try:
            message.ParseFromString(body[5 : 5 + length])
        except DecodeError:
            raise TargetError("invalid_body", f"body is not a {kind.DESCRIPTOR.full_name}") from None
        name, version = getattr(message, name_field), getattr(message, version_field)
    if not name:
        raise TargetError("model_unresolved", f"{kind.DESCRIPTOR.full_name} names no model")
    return Target(kind="model", model=name, version=version)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A protobuf varint at `pos`: (value, next position). IndexError when the data ends inside it."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _head(data: bytes, kind: str) -> tuple[str, str]:
    """The name (field 1) and version (field 2) of a message of which only the first bytes came (every
    request that names a model holds them there: serializers write fields in number order). The version
    is known to be absent only once a later field is seen: a head that ends before that is refused,
    never read as unpinned."""
    fields: dict[int, str] = {}
    pos = 0
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if number not in (1, 2):
                return fields.get(1, ""), fields.get(2, "")
            if wire != 2:
                raise ValueError(f"field {number} is not a string")
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise IndexError
            fields[number] = data[pos : pos + size].decode()
            pos += size
        if len(fields) == 2:  # both, and nothing after them came: the head ends right there
            return fields[1], fields[2]
    except IndexError:
        pass
    except (ValueError, UnicodeDecodeError):
        raise TargetError("invalid_body", f"body is not a {kind}") from None
    raise TargetError(
        "invalid_body", f"the {len(data)} bytes of the {kind} sent for checking end before its model is named"
    )


def _openai(body: bytes, *, generates: bool, tokenized: Container[str]) -> Target:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise TargetError("invalid_body", "body is not JSON") from None
    except RecursionError:  # nested deeper than the parser goes (about 1000 levels)
        raise TargetError("invalid_body", "body is nested too deep") from None
    if not isinstance(doc, dict):
        raise TargetError("invalid_body", "body is not a JSON object")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise TargetError("model_unresolved", 'body has no "model" string')
    max_tokens = next((doc[key] for key in _MAX_TOKENS_KEYS if doc.get(key) is not None), None)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0
    ):
        raise TargetError("invalid_body", "max_tokens must be a non-negative integer")
    if not generates:
        max_tokens = 0  # an embedding's answer holds no tokens: it asks for its input only
    texts, ids = prompt_texts(doc)
    if texts and model in tokenized:  # counted by the model's tokenizer after authentication (core.py)
        return Target(kind="model", model=model, tokens=ids, max_tokens=max_tokens, texts=tuple(texts))
    prompt = ids + estimate_tokens(texts)
    return Target(kind="model", model=model, tokens=prompt + (max_tokens or 0), max_tokens=max_tokens)
