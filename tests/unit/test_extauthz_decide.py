"""decide(): table-driven, no sockets, no protos."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshgate.extauthz import CODES, Authorizer, CheckInput, decide
from tests.unit.test_extauthz_support import API_KEY, API_KEY_GLOBEX, make_table, mint, policy_doc

TABLE = make_table()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def chat(model: str = "llama-chat", max_tokens: int | None = 100, prompt: str = "hello") -> bytes:
    doc: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if max_tokens is not None:
        doc["max_tokens"] = max_tokens
    return json.dumps(doc).encode()


@dataclass
class Case:
    name: str
    headers: dict[str, str]
    code: str
    path: str = "/v2/models/resnet/infer"
    method: str = "POST"
    body: bytes = b""
    expect: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("jwt allows a public model", bearer(mint()), "ok",
         expect={"tenant": "acme", "user": "alice", "tier": "gold", "model": "resnet"}),
    Case("api key allows a public model", {"x-api-key": API_KEY}, "ok",
         expect={"tenant": "acme", "user": "acme-ci", "tier": "gold", "credential": "api_key:acme-ci"}),
    Case("pinned version in the path", bearer(mint()), "ok", path="/v2/models/resnet/versions/v2/infer",
         expect={"version": "v2"}),
    Case("server-level path needs only identity", bearer(mint()), "ok", path="/v2/health/ready", method="GET",
         expect={"model": ""}),
    Case("no credentials", {}, "missing_credentials"),
    Case("token and key together", {**bearer(mint()), "x-api-key": API_KEY}, "ambiguous_credentials"),
    Case("basic auth", {"authorization": "Basic YTpi"}, "unsupported_auth_scheme"),
    Case("empty bearer", {"authorization": "Bearer "}, "unsupported_auth_scheme"),
    Case("unknown api key", {"x-api-key": "nope"}, "invalid_api_key"),
    Case("tenant not in policy", bearer(mint(tenant="initech")), "unknown_tenant"),
    Case("tier claim not in policy", bearer(mint(tier="platinum")), "unknown_tier"),
    Case("tier claim overrides tenant tier", bearer(mint(tier="free")), "ok", expect={"tier": "free"}),
    Case("no tenant claim", bearer(mint(tenant=None)), "token_missing_claim"),
    Case("control characters in sub", bearer(mint(sub="eve\r\nx-meshgate-tenant: acme")), "token_invalid"),
    Case("unknown model reads like forbidden", bearer(mint()), "model_forbidden", path="/v2/models/nope/infer"),
    Case("other tenant's private model", bearer(mint(tenant="globex")), "model_forbidden",
         path="/v1/chat/completions", body=chat()),
    Case("owner tenant's private model", bearer(mint()), "ok", path="/v1/chat/completions", body=chat(),
         expect={"model": "llama-chat", "tokens": 102}),
    Case("no role at all", bearer(mint(roles=[])), "role_forbidden"),
    Case("roles as a space-separated string", bearer(mint(roles="reader invoker")), "ok"),
    Case("role limited to one model", {"x-api-key": API_KEY_GLOBEX}, "role_forbidden",
         path="/v2/models/simple/infer"),
    Case("role limited to one version", {"x-api-key": API_KEY_GLOBEX}, "version_forbidden",
         path="/v2/models/resnet/versions/v2/infer"),
    Case("role's own version", {"x-api-key": API_KEY_GLOBEX}, "ok", path="/v2/models/resnet/versions/v1/infer",
         expect={"user": "batch", "tier": "free"}),
    Case("version that does not exist", bearer(mint()), "version_forbidden",
         path="/v2/models/resnet/versions/v9/infer"),
    Case("max_tokens over the context limit", bearer(mint()), "max_tokens_exceeds_context",
         path="/v1/chat/completions", body=chat(max_tokens=5000)),
    Case("prompt + max_tokens over the context limit", bearer(mint()), "context_limit_exceeded",
         path="/v1/chat/completions", body=chat(max_tokens=4000, prompt="x" * 800)),
    Case("openai body not JSON", bearer(mint()), "invalid_body", path="/v1/chat/completions", body=b"{nope"),
    Case("openai body without model", bearer(mint()), "model_unresolved", path="/v1/completions",
         body=b'{"prompt": "hi"}'),
    Case("path that names no model", bearer(mint()), "model_unresolved", path="/admin"),
    Case("allowed browser origin", {**bearer(mint()), "origin": "https://app.acme.example"}, "ok"),
    Case("foreign browser origin", {**bearer(mint()), "origin": "https://evil.example"}, "origin_forbidden"),
    Case("browser without origin", {**bearer(mint()), "sec-fetch-site": "cross-site"}, "origin_forbidden"),
    Case("tenant without allowed_origins takes any origin",
         {**bearer(mint(tenant="globex")), "origin": "https://any.example"}, "ok"),
    Case("client-sent identity headers change nothing",
         {**bearer(mint(tenant="globex")), "x-meshgate-tenant": "acme", "x-meshgate-model": "llama-chat"},
         "model_forbidden", path="/v1/chat/completions", body=chat()),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    req = CheckInput(method=case.method, path=case.path, headers=case.headers, body=case.body)
    decision = decide(TABLE, req)
    assert decision.code == case.code, decision.message
    assert decision.status == CODES[case.code]
    assert decision.allowed == (case.code == "ok")
    seen = {
        **({"tenant": decision.identity.tenant, "user": decision.identity.user, "tier": decision.identity.tier,
            "credential": decision.identity.credential} if decision.identity else {}),
        **({"model": decision.target.model, "version": decision.target.version, "tokens": decision.target.tokens}
           if decision.target else {}),
    }  # fmt: skip
    for key, value in case.expect.items():
        assert seen.get(key) == value, (key, seen)


def test_every_code_has_a_documented_status() -> None:
    assert set(CODES.values()) <= {200, 400, 401, 403, 404, 413}


def test_cache_hit_for_the_same_token_and_request() -> None:
    authorizer = Authorizer(TABLE)
    req = CheckInput(method="POST", path="/v2/models/resnet/infer", headers=bearer(mint()))
    first, cached_first = authorizer.decide(req)
    second, cached_second = authorizer.decide(req)
    assert (cached_first, cached_second) == (False, True)
    assert first == second and first.allowed


def test_cache_key_includes_the_model() -> None:
    authorizer = Authorizer(TABLE)
    token = mint(roles=["classifier-only"])
    ok, _ = authorizer.decide(
        CheckInput(method="POST", path="/v2/models/resnet/infer", headers=bearer(token))
    )
    other, cached = authorizer.decide(
        CheckInput(method="POST", path="/v2/models/simple/infer", headers=bearer(token))
    )
    assert ok.allowed and other.code == "role_forbidden" and not cached


def test_cache_entry_never_outlives_the_token() -> None:
    authorizer = Authorizer(TABLE)
    exp = int(time.time()) + 20
    req = CheckInput(method="POST", path="/v2/models/resnet/infer", headers=bearer(mint(exp=exp)))
    now = time.time()
    assert authorizer.decide(req, now=now)[0].allowed
    assert authorizer.decide(req, now=now)[1] is True
    # past exp the cached allow is gone; the token itself is now (with 5 s leeway) still judged by PyJWT
    assert authorizer.decide(req, now=exp + 0.001)[1] is False


def test_denials_before_authentication_are_not_cached() -> None:
    authorizer = Authorizer(TABLE)
    req = CheckInput(method="POST", path="/v2/models/resnet/infer", headers=bearer(mint(aud="other")))
    assert authorizer.decide(req)[0].code == "token_wrong_audience"
    assert len(authorizer.cache) == 0


def test_cache_is_bounded_lru() -> None:
    authorizer = Authorizer(make_table(policy_doc(decision_cache_entries=2)))
    reqs = [
        CheckInput(method="POST", path="/v2/models/resnet/infer", headers=bearer(mint())) for _ in range(3)
    ]
    for req in reqs:
        authorizer.decide(req)
    assert len(authorizer.cache) == 2
    assert authorizer.decide(reqs[0])[1] is False  # evicted first
    assert authorizer.decide(reqs[2])[1] is True


def test_cache_disabled_with_zero_entries() -> None:
    authorizer = Authorizer(make_table(policy_doc(decision_cache_entries=0)))
    req = CheckInput(method="POST", path="/v2/models/resnet/infer", headers=bearer(mint()))
    authorizer.decide(req)
    assert authorizer.decide(req)[1] is False
