"""The protobuf edge: CheckRequest -> CheckInput, Decision -> CheckResponse via `allow()` / `deny()`.

Under OpenAI's paths (target.OPENAI_PREFIXES) a denial's body is in OpenAI's error shape, `{"error":
{"message", "type", "param", "code"}}`, which OpenAI's SDKs read into their exceptions; elsewhere it is
meshgate's `{"error": code, "message"}`. OpenAI's model list is answered here too (`answer()`): a
denied_response with status 200, which Envoy sends to the client as it is (extauthz answered it)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from meshgate import contract

from .request import CheckInput, Decision

__all__ = [
    "DECISION_ID_HEADER",
    "HEADER_PREFIX",
    "METADATA_NAMESPACE",
    "OPENAI_ERROR_TYPES",
    "WireTemplate",
    "add_decision_id",
    "allow",
    "answer",
    "deny",
    "identity_values",
    "openai_error",
    "refused",
    "to_check_input",
    "to_response",
]

HEADER_PREFIX = contract.HEADER_PREFIX
DECISION_ID_HEADER = contract.DECISION_ID_HEADER
METADATA_NAMESPACE = contract.EXTAUTHZ_METADATA
REALM = "meshgate"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
_GRPC_STATUS = {401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED, 404: code_pb2.NOT_FOUND}
OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",  # OpenAI's own type for model_not_found
    413: "invalid_request_error",
    429: "rate_limit_error",
}
"""HTTP status -> the `type` of an OpenAI-shaped error (the SDKs pick their exception by the status)."""


def to_check_input(request: external_auth_pb2.CheckRequest) -> CheckInput:
    """The request's `headers` map is used as it is (read-only, not copied: the core reads a handful of
    headers, a copy of all of them cost more than the cached decision); only Envoy's raw form is merged."""
    http = request.attributes.request.http
    headers: Mapping[str, str] = http.headers
    if http.HasField("header_map"):  # Envoy's encode_raw_headers form
        merged = dict(headers)
        for entry in http.header_map.headers:
            value = entry.raw_value.decode("utf-8", "replace") if entry.raw_value else entry.value
            key = entry.key.lower()
            merged[key] = f"{merged[key]},{value}" if key in merged else value
        headers = merged
    body = http.raw_body or http.body.encode()
    source = request.attributes.source.address.socket_address.address
    return CheckInput(
        method=http.method, path=http.path, headers=headers, body=body, source=source, request_id=http.id
    )


def allow(
    set_headers: Mapping[str, str],
    *,
    remove: Iterable[str] = (),
    metadata: Mapping[str, str | int] | None = None,
) -> external_auth_pb2.CheckResponse:
    """An OK response that overwrites `set_headers` and removes `remove` from the upstream request."""
    response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))
    ok = response.ok_response
    for name, value in set_headers.items():
        ok.headers.add(header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE)
    ok.headers_to_remove.extend(sorted(set(remove) - set(set_headers)))
    if metadata is not None:
        fields = response.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields
        for key, item in metadata.items():
            if isinstance(item, str):
                fields[key].string_value = item
            else:
                fields[key].number_value = item
    return response


def openai_error(status: int, code: str, message: str) -> dict[str, object]:
    """OpenAI's error body."""
    error_type = OPENAI_ERROR_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def deny(
    status: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    openai: bool = False,
) -> external_auth_pb2.CheckResponse:
    """A denied response: HTTP `status` with a JSON body {"error": code, "message": message}, or in
    OpenAI's shape with `openai`."""
    body = openai_error(status, code, message) if openai else {"error": code, "message": message}
    grpc_code = _GRPC_STATUS.get(status, code_pb2.INVALID_ARGUMENT)
    return _direct(status, json.dumps(body), grpc_code=grpc_code, message=code, headers=headers)


def refused(headers: Iterable[tuple[str, str]], body: str) -> external_auth_pb2.CheckResponse:
    """A 429 of the token admission (meshgate/ratelimit/admission.py): its headers and body as they are
    (no content-type added to an empty body: the rate limit filter's own 429 has none)."""
    response = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="rate_limited")
    )
    denied = response.denied_response
    denied.status.code = http_status_pb2.StatusCode.Value("TooManyRequests")
    for name, value in headers:
        denied.headers.add(header=base_pb2.HeaderValue(key=name, value=value), append_action=_APPEND)
    denied.body = body
    return response


def answer(body: str) -> external_auth_pb2.CheckResponse:
    """A request extauthz answers itself (OpenAI's model list): HTTP 200 with a JSON `body`, sent to the
    client by Envoy as a denied_response (any CheckResponse status but OK is one; ABORTED: "not let
    through"). Envoy counts it in its ext_authz.denied stat."""
    return _direct(200, body, grpc_code=code_pb2.ABORTED, message="answered", headers=None)


def _direct(
    status: int, body: str, *, grpc_code: int, message: str, headers: Mapping[str, str] | None
) -> external_auth_pb2.CheckResponse:
    response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=grpc_code, message=message))
    denied = response.denied_response
    denied.status.code = http_status_pb2.StatusCode.Value(_STATUS_NAMES[status])
    all_headers = {"content-type": "application/json", **(headers or {})}
    for name, value in all_headers.items():
        denied.headers.add(header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE)
    denied.body = body
    return response


_STATUS_NAMES = {
    200: "OK",
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    413: "PayloadTooLarge",
}


def _model_card(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "meshgate"}


def model_list(decision: Decision) -> str:
    """The body of an allowed OpenAI model list (or of one model, for /v1/models/{model})."""
    target = decision.target
    if target is not None and target.model:
        return json.dumps(_model_card(decision.listing[0]))
    return json.dumps({"object": "list", "data": [_model_card(name) for name in decision.listing]})


def www_authenticate(code: str) -> str:
    if code == "missing_credentials":
        return f'Bearer realm="{REALM}"'
    error = (
        "invalid_request" if code in ("ambiguous_credentials", "unsupported_auth_scheme") else "invalid_token"
    )
    return f'Bearer realm="{REALM}", error="{error}", error_description="{code}"'


def to_response(
    decision: Decision,
    *,
    client_headers: Iterable[str],
    api_key_header: str,
    forward_authorization: bool,
    openai: bool = False,
) -> external_auth_pb2.CheckResponse:
    """The CheckResponse for a decision: identity headers on allow, a JSON error on deny (in OpenAI's
    shape with `openai`), the model list for an allowed list request.
    `client_headers`: the x-meshgate-* header names the client sent (all removed or overwritten)."""
    if not decision.allowed:
        extra = {}
        if decision.status == 401:
            extra["www-authenticate"] = www_authenticate(decision.code)
        return deny(decision.status, decision.code, decision.message, headers=extra, openai=openai)
    who, target = decision.identity, decision.target
    assert who is not None and target is not None
    if target.kind == "models":
        return answer(model_list(decision))
    headers = {contract.IDENTITY_HEADERS[key]: value for key, value in identity_values(decision).items()}
    if target.version:
        headers[contract.VERSION_HEADER] = target.version
    remove = [*client_headers, api_key_header]
    if not forward_authorization or who.credential.startswith("api_key:"):  # a key never goes upstream
        remove.append("authorization")
    metadata: dict[str, str | int] = {
        "tenant": who.tenant,
        "user": who.user,
        "tier": who.tier,
        "model": target.model,
        contract.ASKED_TOKENS_KEY: target.tokens,
    }
    if target.version:
        metadata["version"] = target.version
    return allow(headers, remove=remove, metadata=metadata)


def identity_values(decision: Decision) -> dict[str, str]:
    """What an allowed decision says of its caller and model, by key of contract.IDENTITY_HEADERS: the
    values of the x-meshgate-* headers it sets, and so of the rate limit descriptors read from them
    (the gateway's, and the admission in the Check's: step.py)."""
    who, target = decision.identity, decision.target
    assert who is not None and target is not None
    values = {"tenant": who.tenant, "user": who.user, "tier": who.tier}
    if target.model:
        values["model"] = target.model
    return values


def add_decision_id(response: external_auth_pb2.CheckResponse, decision_id: str) -> None:
    """x-meshgate-decision-id: to the upstream on allow, to the client on deny (matches the audit line)."""
    target = response.ok_response if response.HasField("ok_response") else response.denied_response
    target.headers.add(
        header=base_pb2.HeaderValue(key=DECISION_ID_HEADER, value=decision_id), append_action=_OVERWRITE
    )


@dataclass(frozen=True, slots=True)
class WireTemplate:
    """A CheckResponse serialized once, with a hole of `width` bytes for its x-meshgate-decision-id.
    A cached decision's response is then one concatenation: no copy, no added header, no serialization
    (those cost more than the cached decision itself)."""

    head: bytes
    tail: bytes
    width: int

    @classmethod
    def build(
        cls,
        response: external_auth_pb2.CheckResponse,
        *,
        width: int,
        encode: Callable[[external_auth_pb2.CheckResponse], bytes] | None = None,
    ) -> WireTemplate:
        """`response` (left unchanged) plus a decision id of `width` ASCII characters, as `encode`
        writes it (default: serialized, map entries sorted; `encode` must be as deterministic)."""
        # Serialized with two placeholders of that length: the bytes differ exactly where the id goes, so
        # the hole is where one has "a"s and the other "b"s, whatever the other fields hold (values from
        # tokens and bodies may contain "aaaa" too).
        a, b = b"a" * width, b"b" * width
        encode = encode or _serialized
        first, second = encode(_with_id(response, a.decode())), encode(_with_id(response, b.decode()))
        start = first.find(a)
        while start != -1 and second[start : start + width] != b:
            start = first.find(a, start + 1)
        end = start + width
        if start == -1 or first[:start] != second[:start] or first[end:] != second[end:]:
            raise AssertionError("the decision id is not one contiguous field")
        return cls(head=first[:start], tail=first[end:], width=width)

    def render(self, decision_id: str) -> bytes:
        """The serialized CheckResponse carrying `decision_id` (same length as the hole: same framing)."""
        raw = decision_id.encode()
        if len(raw) != self.width:
            raise ValueError(f"decision id {decision_id!r} is not {self.width} bytes")
        return self.head + raw + self.tail


def _with_id(response: external_auth_pb2.CheckResponse, decision_id: str) -> external_auth_pb2.CheckResponse:
    copy = external_auth_pb2.CheckResponse()
    copy.CopyFrom(response)
    add_decision_id(copy, decision_id)
    return copy


def _serialized(response: external_auth_pb2.CheckResponse) -> bytes:
    return bytes(response.SerializeToString(deterministic=True))  # map entries sorted: both copies alike
