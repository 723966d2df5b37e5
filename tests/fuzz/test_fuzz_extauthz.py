"""extauthz on arbitrary CheckRequests: a well-formed CheckResponse (allow, or a denial with a known code
and its HTTP status), or Unavailable (gRPC UNAVAILABLE); never any other exception. Arbitrary methods,
paths (KServe v2, Triton gRPC, OpenAI, junk, very long), headers (credentials real, mutated and junk,
client x-meshgate-* copies, Envoy's raw header_map form) and bodies (bytes, OpenAI JSON with any values,
JSON nested 100 000 deep, megabyte strings, gRPC frames of Triton requests, truncated or not).

The servicer over raw request bytes is fuzzed too: bytes in, and either a response or a clean status
out (INVALID_ARGUMENT for a request that is not a CheckRequest), never "internal error".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from meshgate.extauthz import ExtAuthzService
from meshgate.extauthz.request import CODES, Unavailable
from meshgate.extauthz.servicer import Servicer
from meshgate.policy.store import PolicyStore
from tests.fuzz._grpc import Aborted, FakeContext
from tests.fuzz._requests import BODIES, HUGE, PATHS, TEXT, deep_json
from tests.unit.test_extauthz_support import API_KEY, API_KEY_GLOBEX, make_policy, mint

NOT_AN_ANSWER = {code_pb2.UNKNOWN, code_pb2.INTERNAL}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtAuthzService]:
    store = PolicyStore(tmp_path_factory.mktemp("extauthz-fuzz") / "policy.yaml")
    svc = ExtAuthzService(store, registry=CollectorRegistry())
    store.apply(make_policy())
    yield svc


# --- strategies -------------------------------------------------------------------------------------
def _mutate_token(token: str, at: int, char: str) -> str:
    at %= max(1, len(token))
    return token[:at] + char + token[at + 1 :]


@st.composite
def credentials(draw: st.DrawFn) -> dict[str, str]:
    out: dict[str, str] = {}
    if draw(st.booleans()):
        token = draw(st.sampled_from(["valid", "mutated", "junk", "tenantless", "huge"]))
        if token == "valid":
            value = mint()
        elif token == "mutated":
            value = _mutate_token(mint(), draw(st.integers(0, 2000)), draw(st.characters()))
        elif token == "tenantless":
            value = mint(tenant=None, roles=draw(st.lists(TEXT, max_size=3)))
        elif token == "huge":
            value = "a." + draw(HUGE) + ".b"
        else:
            value = draw(TEXT)
        scheme = draw(st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Bearer  "]))
        out["authorization"] = scheme + value
    if draw(st.booleans()):
        out["x-api-key"] = draw(st.sampled_from([API_KEY, API_KEY_GLOBEX]) | TEXT)
    return out


HEADER_NAMES = st.sampled_from(
    ["x-meshgate-tenant", "x-meshgate-model", "x-meshgate-user", "origin", "traceparent", "content-type",
     "x-request-id", "x-meshgate-usage-tokens", "host", ":authority"]
) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz-:", min_size=1, max_size=20)  # fmt: skip
HEADERS = st.dictionaries(HEADER_NAMES, TEXT | HUGE, max_size=6)


@st.composite
def check_requests(draw: st.DrawFn) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method = draw(st.sampled_from(["POST", "GET", "PUT", ""]) | TEXT)
    http.path = draw(PATHS)
    http.headers.update({**draw(HEADERS), **draw(credentials())})
    body = draw(BODIES)
    if draw(st.booleans()):
        http.raw_body = body
    else:
        http.body = body.decode("utf-8", "replace")
    if draw(st.integers(0, 4)) == 0:  # Envoy's encode_raw_headers form, beside or instead of the map
        for name, value in draw(HEADERS).items():
            http.header_map.headers.add(key=name, raw_value=value.encode("utf-8", "surrogatepass"))
    http.id = draw(TEXT)
    request.attributes.source.address.socket_address.address = draw(st.sampled_from(["10.0.0.1", ""]) | TEXT)
    return request


def assert_well_formed(raw: bytes) -> None:
    """A CheckResponse: OK with an ok_response, or a denied (or locally answered) response with an HTTP
    status and a JSON body; a denial's error code is a known one, with its HTTP status."""
    response = external_auth_pb2.CheckResponse.FromString(raw)
    if response.status.code == code_pb2.OK:
        assert response.HasField("ok_response")
        return
    assert response.status.code not in NOT_AN_ANSWER, response.status
    denied = response.denied_response
    assert 200 <= denied.status.code < 600
    body = json.loads(denied.body)
    if "error" not in body:
        return
    error = body["error"]
    code = error["code"] if isinstance(error, dict) else error  # OpenAI paths: OpenAI's error object
    assert code in CODES
    assert denied.status.code == CODES[code]


# --- properties -------------------------------------------------------------------------------------
def _openai(body: bytes, **headers: str) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.raw_body = "POST", "/v1/chat/completions", body
    http.headers.update(headers)
    return request


@given(request=check_requests())
@example(request=_openai(deep_json(100_000, "list"), **{"x-api-key": API_KEY}))
@example(request=_openai(deep_json(100_000, "object"), **{"x-api-key": API_KEY}))
@example(request=_openai(b'{"model": "llama-chat", "max_tokens": 1e999}', **{"x-api-key": API_KEY}))
def test_check_answers_or_is_unavailable(
    service: ExtAuthzService, request: external_auth_pb2.CheckRequest
) -> None:
    try:
        raw = service.check(request)
    except Unavailable:
        return
    assert_well_formed(raw)


@given(raw=st.one_of(st.binary(max_size=512), check_requests().map(lambda r: r.SerializeToString())))
@example(raw=b"\x7f\xff\xff\xff")
def test_servicer_on_raw_bytes_answers_or_gives_a_clean_status(service: ExtAuthzService, raw: bytes) -> None:
    try:
        out = asyncio.run(Servicer(service).Check(raw, FakeContext()))  # type: ignore[arg-type]
    except Aborted as aborted:
        assert aborted.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE)
        assert aborted.details != "internal error", "an unexpected exception inside the check"
        return
    assert_well_formed(out)
