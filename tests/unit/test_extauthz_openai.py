"""extauthz for OpenAI's clients, through what the servicer calls (`ExtAuthzService.check`), no sockets:
a bearer that is not a JWT is an API key, errors in OpenAI's shape under OpenAI's paths, the model list,
/v1/responses, /v1/embeddings and /openai/v1/ read like chat completions."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from prometheus_client import CollectorRegistry

from meshgate.extauthz import CheckInput, ExtAuthzService, decide
from meshgate.extauthz.http import to_http
from meshgate.policy.store import PolicyStore
from tests.unit.test_extauthz_support import (
    API_KEY,
    API_KEY_GLOBEX,
    make_policy,
    make_table,
    mint,
    policy_doc,
)


def service(tmp_path: Path, doc: dict[str, Any] | None = None) -> ExtAuthzService:
    store = PolicyStore(tmp_path / "policy.yaml")
    svc = ExtAuthzService(store, registry=CollectorRegistry())
    store.apply(make_policy(doc))
    return svc


def check(svc: ExtAuthzService, path: str, body: Any = None, method: str = "POST", **headers: str) -> Any:
    """The CheckResponse the servicer sends for one request (parsed back from its bytes)."""
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = method, path
    if body is not None:
        http.raw_body = json.dumps(body).encode()
    http.headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    return external_auth_pb2.CheckResponse.FromString(svc.check(request))


def headers_of(options: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}


CHAT = {"model": "llama-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}


# --- 1. a bearer that is not a JWT is an API key ------------------------------------------------------


def test_a_bearer_that_is_not_a_jwt_is_an_api_key(tmp_path: Path) -> None:
    svc = service(tmp_path, policy_doc(forward_authorization=True))
    response = check(svc, "/v1/chat/completions", CHAT, authorization=f"Bearer {API_KEY}")
    assert response.HasField("ok_response"), response
    set_headers = headers_of(response.ok_response.headers)
    assert set_headers["x-meshgate-tenant"] == "acme" and set_headers["x-meshgate-user"] == "acme-ci"
    # forward_authorization passes a JWT on; never a key
    assert "authorization" in response.ok_response.headers_to_remove


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"authorization": "Bearer not-a-key"}, "invalid_api_key"),
        ({"authorization": "Bearer sk-dummy", "x-api-key": API_KEY}, "ambiguous_credentials"),
        ({"authorization": f"Bearer {API_KEY}", "x-api-key": API_KEY}, "ambiguous_credentials"),
        ({"authorization": f"Bearer {mint()}", "x-api-key": API_KEY}, "ambiguous_credentials"),
        ({"authorization": "Bearer a.b.c"}, "token_malformed"),  # three parts: a JWT, a broken one
    ],
    ids=["unknown key", "dummy bearer + key", "key twice", "jwt + key", "three dot-separated parts"],
)
def test_bearer_keys_are_refused_like_keys(headers: dict[str, str], code: str) -> None:
    decision = decide(make_table(), CheckInput(method="POST", path="/v1/chat/completions",
                                               headers=headers, body=json.dumps(CHAT).encode()))  # fmt: skip
    assert decision.code == code


def test_a_bearer_key_is_never_in_the_audit_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    svc = service(tmp_path)
    with caplog.at_level("INFO", logger="meshgate.extauthz.audit"):
        check(svc, "/v1/chat/completions", CHAT, authorization=f"Bearer {API_KEY}")
        check(svc, "/v1/chat/completions", CHAT, authorization=f"Bearer {API_KEY_GLOBEX}x")
        svc._audit.flush()
    text = caplog.text
    assert '"credential": "api_key:acme-ci"' in text or '"credential":"api_key:acme-ci"' in text
    assert API_KEY not in text and API_KEY_GLOBEX not in text


# --- 2. errors in OpenAI's shape under OpenAI's paths ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code", "error_type"),
    [
        ("/v1/chat/completions", CHAT, {}, 401, "missing_credentials", "authentication_error"),
        ("/v1/chat/completions", CHAT, {"authorization": "Bearer nope"}, 401, "invalid_api_key",
         "authentication_error"),
        ("/openai/v1/chat/completions", {"model": "simple"}, {"x_api_key": API_KEY_GLOBEX}, 403, "role_forbidden",
         "permission_error"),
        ("/v1/completions", {"prompt": "hi"}, {"x_api_key": API_KEY}, 400, "model_unresolved",
         "invalid_request_error"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 4000, "messages": [{"content": "x" * 800}]},
         {"x_api_key": API_KEY}, 413, "context_limit_exceeded", "invalid_request_error"),
    ],
    ids=["401 no credential", "401 bad key", "403 role", "400 no model", "413 context"],
)  # fmt: skip
def test_openai_paths_get_openai_shaped_errors(
    tmp_path: Path, path: str, body: Any, headers: dict[str, str], status: int, code: str, error_type: str
) -> None:
    response = check(service(tmp_path), path, body, **headers)
    denied = response.denied_response
    assert denied.status.code == status
    error = json.loads(denied.body)["error"]
    assert error == {"message": error["message"], "type": error_type, "param": None, "code": code}
    assert error["message"]
    assert headers_of(denied.headers)["content-type"] == "application/json"


def test_kserve_paths_keep_meshgate_errors_even_for_a_cached_decision(tmp_path: Path) -> None:
    """The same cached decision (same key, model, tokens) is rendered per path: OpenAI's shape under /v1/,
    meshgate's under /v2/ (the response memo is keyed by both)."""
    svc = service(tmp_path)
    body = {"model": "simple"}
    for _ in range(2):  # the second round comes from the decision cache and the response memo
        openai = check(svc, "/v1/chat/completions", body, x_api_key=API_KEY_GLOBEX).denied_response
        kserve = check(svc, "/v2/models/simple/infer", x_api_key=API_KEY_GLOBEX).denied_response
        assert json.loads(openai.body)["error"]["code"] == "role_forbidden"
        assert json.loads(kserve.body) == {
            "error": "role_forbidden",
            "message": json.loads(kserve.body)["message"],
        }


def test_http_answers_of_cached_decisions_are_the_answers_built_afresh(tmp_path: Path) -> None:
    """Over HTTP (`check_http`) a cached decision's answer comes from its template (answers.py), per
    form and path: byte for byte what to_http writes for the message, but for the decision id."""
    svc = service(tmp_path)
    token = mint()
    requests = [
        CheckInput(method="POST", path="/v2/models/resnet/infer", headers={"authorization": f"Bearer {token}"}),
        CheckInput(method="HEAD", path="/v2/models/resnet/infer", headers={"authorization": f"Bearer {token}"}),
        CheckInput(method="POST", path="/v2/models/simple/infer", headers={"x-api-key": API_KEY_GLOBEX}),
        CheckInput(
            method="POST", path="/v1/chat/completions", headers={"x-api-key": API_KEY_GLOBEX},
            body=json.dumps({"model": "simple"}).encode(),
        ),
    ]  # fmt: skip

    async def answers() -> list[tuple[bytes, bytes]]:
        out = []
        for _ in range(3):  # the decision is made, then cached (its template made, then used)
            for req in requests:
                fresh = to_http(await svc.check_message(req), head=req.method == "HEAD")
                out.append((await svc.check_http(req), fresh))
        return out

    ids: set[bytes] = set()
    for memo, fresh in asyncio.run(answers()):
        found, made = _DECISION_ID.search(memo), _DECISION_ID.search(fresh)
        assert found is not None and made is not None and found.group(1) != made.group(1)
        assert memo.replace(found.group(1), made.group(1)) == fresh
        ids.add(found.group(1))
    assert len(ids) == 3 * len(requests)  # each answer its own id
    assert svc.cache_bytes()["response"][0] > 0  # the templates are held


_DECISION_ID = re.compile(rb"x-meshgate-decision-id: ([^\r]+)\r\n")


# --- 3. the model list, and the other OpenAI endpoints -----------------------------------------------


def listing_doc() -> dict[str, Any]:
    doc = policy_doc()
    endpoints = [{"name": "v1", "endpoints": ["127.0.0.1:9401"]}]
    doc["models"] += [
        {"name": "zen-chat", "protocol": "openai", "versions": endpoints},
        {"name": "other-chat", "protocol": "openai", "visibility": "private", "owner": "globex",
         "versions": endpoints},
    ]  # fmt: skip
    doc["roles"].append({"name": "zen-only", "models": ["zen-chat"]})
    doc["api_keys"][1]["roles"] = ["classifier-only", "zen-only"]
    return doc


@pytest.mark.parametrize("prefix", ["/v1", "/openai/v1"])
def test_the_model_list_is_the_openai_models_the_caller_may_use(tmp_path: Path, prefix: str) -> None:
    svc = service(tmp_path, listing_doc())
    for _ in range(2):  # fresh, then cached
        acme = check(svc, f"{prefix}/models", method="GET", authorization=f"Bearer {mint()}")
        assert acme.denied_response.status.code == 200
        body = json.loads(acme.denied_response.body)
        # acme: every model by role; its own private llama-chat, not globex's other-chat; no KServe model
        assert [m["id"] for m in body["data"]] == ["llama-chat", "zen-chat"]
        assert body["object"] == "list" and body["data"][0]["object"] == "model"
        globex = check(svc, f"{prefix}/models", method="GET", x_api_key=API_KEY_GLOBEX)
        assert [m["id"] for m in json.loads(globex.denied_response.body)["data"]] == ["zen-chat"]
    one = check(svc, f"{prefix}/models/zen-chat", method="GET", x_api_key=API_KEY_GLOBEX).denied_response
    assert one.status.code == 200 and json.loads(one.body)["id"] == "zen-chat"
    for hidden in ("llama-chat", "other-chat", "no-such-model", "resnet"):
        denied = check(
            svc, f"{prefix}/models/{hidden}", method="GET", x_api_key=API_KEY_GLOBEX
        ).denied_response
        assert denied.status.code == 404
        assert json.loads(denied.body)["error"]["code"] == "model_not_found"
    # no credential: 401, not a list
    assert check(svc, f"{prefix}/models", method="GET").denied_response.status.code == 401


@pytest.mark.parametrize(
    ("path", "body", "tokens"),
    [
        ("/v1/responses", {"model": "llama-chat", "input": "hello there!", "max_output_tokens": 7}, 3 + 7),
        ("/v1/responses", {"model": "llama-chat", "instructions": "Be brief.",
                           "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
                           "max_output_tokens": 1}, 3 + 1),
        ("/v1/embeddings", {"model": "llama-chat", "input": ["hello", "world"]}, 3),
        ("/v1/embeddings", {"model": "llama-chat", "input": [[1, 2, 3], [4, 5]]}, 5),
        ("/openai/v1/chat/completions", CHAT, 2 + 5),
        ("/openai/v1/completions", {"model": "llama-chat", "prompt": "hello", "max_tokens": 2}, 2 + 2),
    ],
    ids=["responses text", "responses items", "embeddings text", "embeddings ids", "kserve chat", "kserve completions"],
)  # fmt: skip
def test_other_openai_endpoints_name_the_model_in_the_body(path: str, body: Any, tokens: int) -> None:
    req = CheckInput(method="POST", path=path, headers={"x-api-key": API_KEY}, body=json.dumps(body).encode())
    decision = decide(make_table(), req)
    assert decision.allowed, decision.message
    assert decision.target is not None and decision.target.model == "llama-chat"
    # an embedding asks for its input only, even where a context limit is set (no generation)
    assert decision.target.tokens == tokens
