"""The corpus through every target's real Envoy, with meshgate's real extauthz and ratelimit behind it.

What is the same everywhere: who gets in (every path is checked, forged identity headers never reach a
model), where a model named only in the body is routed (OpenAI, Triton gRPC), what the model sees.
What differs on purpose is stated per target (token quotas, see docs/meshconfig.md).
"""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from meshgate import contract
from tests.conformance.conftest import Gateways
from tests.conformance.corpus import CASES, FORGED, INFER, TARGETS, USER_RPD, Case, api_key, tenant, token


def _headers(case: Case, target: str, *, user: str = "alice") -> dict[str, str]:
    who = tenant(case.who, target)
    headers = dict(case.headers)
    if case.credential == "key":
        headers["x-api-key"] = api_key(who)
    elif case.credential == "bad-key":
        headers["x-api-key"] = "not-a-key"
    elif case.credential == "jwt":
        headers["authorization"] = f"Bearer {token(who, user)}"
    return headers


def _http(gateways: Gateways, target: str, case: Case) -> tuple[int | str, dict[str, str]]:
    url = f"http://127.0.0.1:{gateways.ports[target]}{case.path}"
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        response = client.request(case.method, url, json=case.body, headers=_headers(case, target))
    echo: dict[str, str] = {}
    if response.status_code == 200 and response.content:  # (a server-level answer has no body)
        echo = response.json()["echo"]
    return response.status_code, echo


def _grpc(gateways: Gateways, target: str, case: Case) -> tuple[int | str, dict[str, str]]:
    assert case.grpc_model is not None
    request = service_pb2.ModelInferRequest(model_name=case.grpc_model, id="conformance")
    if case.grpc_raw:
        request.raw_input_contents.append(case.grpc_raw)
    metadata = [(k.lower(), v) for k, v in _headers(case, target).items()]
    with grpc.insecure_channel(f"127.0.0.1:{gateways.ports[target]}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            response = stub.ModelInfer(request, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            return error.code().name, {}
    echo = {k.removeprefix("echo."): v.string_param for k, v in response.parameters.items()}
    return "OK", echo


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("target", TARGETS)
def test_corpus(gateways: Gateways, target: str, case: Case) -> None:
    if target in case.skip:
        pytest.skip(case.skip[target])
    status, echo = (_grpc if case.grpc_model else _http)(gateways, target, case)
    assert status == case.status, f"{target}: {case.name}: {status}, expected {case.status}"
    who = tenant(case.who, target)
    expected = {k: v.replace("{t}", who) for k, v in case.model_sees.items()}
    assert {k: echo.get(k) for k in expected} == expected
    for name in echo:  # nothing the client sent under x-meshgate-* survives (extauthz's own are expected)
        assert case.headers.get(name) != echo[name] or expected.get(name) == echo[name], name


def _infer(gateways: Gateways, target: str, headers: dict[str, str]) -> httpx.Response:
    url = f"http://127.0.0.1:{gateways.ports[target]}/v2/models/rest/infer"
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        return client.post(url, json=INFER, headers=headers)


@pytest.mark.parametrize("target", ["meshgate", "istio"])
@pytest.mark.parametrize(("base", "allowed"), [("acme", 5), ("globex", USER_RPD)])
def test_user_quota_after_tier_arithmetic(gateways: Gateways, target: str, base: str, allowed: int) -> None:
    """user-rpd (4 a day) x the tier: gold 1.4 -> 5 (rounded down), free -> 4; then 429, with one set
    of X-RateLimit headers (meshgate's, not Envoy's too)."""
    headers = {"authorization": f"Bearer {token(tenant(base, target), 'quota-user')}"}
    answers = [_infer(gateways, target, headers) for _ in range(allowed + 1)]
    assert [a.status_code for a in answers] == [200] * allowed + [429]
    for answer in answers:
        assert len(answer.headers.get_list("x-ratelimit-limit")) == 1, answer.headers
    assert answers[-1].headers["x-ratelimit-remaining"] == "0"


def _chat(gateways: Gateways, target: str, max_tokens: int) -> httpx.Response:
    url = f"http://127.0.0.1:{gateways.ports[target]}/v1/chat/completions"
    body: dict[str, Any] = {
        "model": "chat",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hi"}],
    }
    headers = {"x-api-key": api_key(tenant("globex", target))}
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        return client.post(url, json=body, headers=headers)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # checked with the tokens asked, charged with the tokens used (20): the second fits
        ("meshgate", [200, 200, 429]),
        # counted with the tokens asked (istio-proxy cannot read the usage): the second does not fit
        ("istio", [200, 429, 429]),
    ],
)
def test_token_quota(gateways: Gateways, target: str, expected: list[int]) -> None:
    """chat-tokens: 400 a day for the free tenant. Asks of 300, 300, 450 tokens. The 429 is OpenAI's,
    naming the quota, with Retry-After, on both (the Istio rendering's local reply mapper)."""
    answers = [_chat(gateways, target, n) for n in (300, 300, 450)]
    assert [a.status_code for a in answers] == expected
    refusal = answers[-1]
    error = refusal.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "rate_limit_error")
    assert "chat-tokens" in error["quota"].split(","), error  # (user-rpd too, once the corpus spent it)
    assert int(refusal.headers["retry-after"]) == int(refusal.headers["x-ratelimit-reset"]) > 0


def test_every_request_of_every_target_was_checked(gateways: Gateways) -> None:
    """ext_authz ran on every request each gateway received (none is exempt: contract.PUBLIC_PATHS)."""
    assert contract.PUBLIC_PATHS == ()
    for target in TARGETS:
        _infer(gateways, target, {"x-meshgate-model": "rest"})  # at least one request each
    stats = {
        "meshgate": ("http.gateway.downstream_rq_total", "http.gateway.ext_authz."),
        "istio": ("http.istio_gateway.downstream_rq_total", "http.istio_gateway.ext_authz."),
        "envoy-gateway": ("http.eg_gateway.downstream_rq_total", "http.eg_gateway.ext_authz."),
    }
    for target, (total_name, prefix) in stats.items():
        envoy_stats = gateways.envoys[target].stats()
        checked = sum(envoy_stats.get(prefix + outcome, 0) for outcome in ("ok", "denied", "error"))
        assert checked == envoy_stats[total_name] > 0, (target, checked, envoy_stats[total_name])


@pytest.mark.parametrize("target", TARGETS)
def test_forged_identity_never_reaches_a_model_even_failing_open(failing_open: Gateways, target: str) -> None:
    """extauthz unreachable and `failure_mode_allow: true`: the gateways let requests through, but what
    the client sent as x-meshgate-* is gone before any route, rate limit or model sees it."""
    forged = {**FORGED, "x-meshgate-model": "rest", "x-meshgate-decision-id": "forged"}
    url = f"http://127.0.0.1:{failing_open.ports[target]}/v2/models/rest/infer"
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        answer = client.post(url, json=INFER, headers=forged)
    assert answer.status_code == 200, answer.text  # failed open
    assert answer.json()["echo"] == {}
