"""Token admission in extauthz's Check (`gateway.ratelimit.admission: extauthz`,
meshgate/ratelimit/admission.py): the check descriptors Envoy would have sent, decided by this process's
rate limiter on its store, the 429 the gateway would have answered, and what the gateway's config leaves
out and lets through. Real objects (MemoryStore, RateLimitService, ExtAuthzService), no sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2
from prometheus_client import CollectorRegistry

from meshgate import contract
from meshgate.extauthz import CheckInput, ExtAuthzService, Unavailable, decide, step
from meshgate.extauthz.http import to_http
from meshgate.health import Health
from meshgate.policy import Policy, PolicyError, parse_policy
from meshgate.policy.store import PolicyStore
from meshgate.ratelimit import Descriptor, MemoryStore, Request, StoreUnavailable
from meshgate.ratelimit.admission import Admission, AdmissionPlan, refusal_body
from meshgate.ratelimit.service import RateLimitService
from meshgate.ratelimit.store import Slot, StoreResult
from meshgate.xds._authz_http import CLIENT_HEADERS, RATE_LIMIT_HEADERS
from meshgate.xds._quotas import model_rate_limits
from tests.unit.test_extauthz_support import API_KEY, make_policy, make_table, mint, policy_doc

QUOTAS = [
    {"name": "tph", "per": "tenant", "unit": "tokens", "limit": 100, "window": "hour", "models": ["llama-chat"]},
    {"name": "tpd", "per": ["model", "user", "tenant"], "unit": "tokens", "limit": 1000, "window": "day",
     "models": ["llama-chat"]},
    {"name": "rpm", "per": "tenant", "limit": 50, "window": "minute"},
]  # fmt: skip
ACME = {"tenant": "acme", "user": "alice", "tier": "free", "model": "llama-chat"}
CHAT = "/v1/chat/completions"
XRL = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def admission_doc(enforcement: str = "auto", **ratelimit: Any) -> dict[str, Any]:
    """policy_doc with the quotas above for both tenants (tier free: limits as written), an OpenAI model
    `mini` no token quota counts, and `gateway.ratelimit` (admission extauthz unless told). In `auto`
    (the default here) only the token quotas are decided in the Check; in `ext_authz` `rpm` too."""
    doc = policy_doc()
    for tenant in doc["tenants"]:
        tenant.update(tier="free", quotas=["tph", "tpd", "rpm"])
    doc["models"].append(
        {"name": "mini", "protocol": "openai", "versions": [{"name": "v1", "endpoints": ["127.0.0.1:9202"]}]}
    )
    doc["quotas"] = [dict(q) for q in QUOTAS]
    doc["gateway"] = {"enforcement": enforcement, "ratelimit": {"admission": "extauthz", **ratelimit}}
    return doc


class DownStore(MemoryStore):
    """A memory store that cannot answer (what the limiter calls on a memory store: apply_now)."""

    def apply_now(self, slots: Sequence[Slot], now: float) -> StoreResult:
        raise StoreUnavailable("store down")


def ratelimit_service(store: MemoryStore | None = None) -> RateLimitService:
    registry = CollectorRegistry()
    return RateLimitService(
        store if store is not None else MemoryStore(),
        store_name="memory",
        health=Health(registry=registry),
        registry=registry,
    )


def wired(policy: Policy, store: MemoryStore | None = None) -> tuple[RateLimitService, Admission]:
    """As build_services wires it: the policy committed to the rate limiter, the admission on its servicer."""
    service = ratelimit_service(store)
    service.prepare(policy)()
    admission = Admission(service.servicer)
    admission.plan = AdmissionPlan.of(policy)
    return service, admission


def gateway(tmp_path: Path, doc: dict[str, Any], store: MemoryStore | None = None) -> ExtAuthzService:
    """ExtAuthzService and RateLimitService on one PolicyStore, the admission set before the policy."""
    policies = PolicyStore(tmp_path / "policy.yaml")
    svc = ExtAuthzService(policies, registry=CollectorRegistry())
    rl = ratelimit_service(store)
    policies.subscribe("ratelimit", rl.prepare)
    svc.admission = Admission(rl.servicer)
    assert policies.apply(make_policy(doc))
    return svc


def chat(max_tokens: int, model: str = "llama-chat", **headers: str) -> CheckInput:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens}
    sent = {k.replace("_", "-"): v for k, v in headers.items()} or {"authorization": f"Bearer {mint()}"}
    return CheckInput(method="POST", path=CHAT, headers=sent, body=json.dumps(body).encode())


def grpc_request(req: CheckInput) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.raw_body = req.method, req.path, req.body
    http.headers.update(req.headers)
    return request


def options(items: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in items}


def assert_refused_429(response: external_auth_pb2.CheckResponse, quota: str) -> None:
    denied = response.denied_response
    assert not response.HasField("ok_response") and denied.status.code == 429
    headers = options(denied.headers)
    reset = headers["x-ratelimit-reset"]
    assert headers["x-envoy-ratelimited"] == "true" and headers["retry-after"] == reset
    assert headers["content-type"] == "application/json" and headers["x-ratelimit-remaining"] == "0"
    assert denied.body == refusal_body(quota, reset)


# --- 1. the descriptors, and the gateway's config ---------------------------------------------------


def test_request_entries_are_quota_identity_in_descriptor_order_then_phase() -> None:
    policy = make_policy(admission_doc())
    tph, tpd = (q for q in policy.quotas if q.unit == "tokens")
    assert tpd.per == ("model", "user", "tenant")  # written out of order: the entries follow DESCRIPTOR_KEYS
    assert contract.request_entries(tpd, ACME) == (
        ("quota", "tpd"), ("tenant", "acme"), ("user", "alice"), ("model", "llama-chat"), ("meshgate.phase", "check"),
    )  # fmt: skip
    assert contract.request_entries(tph, {**ACME, "tenant": "globex"}) == (
        ("quota", "tph"), ("tenant", "globex"), ("meshgate.phase", "check"),
    )  # fmt: skip


def _limits(policy: Policy, name: str = "llama-chat") -> list[tuple[str, str, str, bool]]:
    """(quota, phase, hits_addend format, apply_on_stream_done) of a model's per-route rate limits."""
    model = next(m for m in policy.models if m.name == name)
    per_route = model_rate_limits(policy, model)
    if per_route is None:
        return []
    found = []
    for limit in per_route.rate_limits:
        keys = {a.generic_key.descriptor_key: a.generic_key.descriptor_value for a in limit.actions}
        if "quota" in keys:
            entry = (keys["quota"], keys.get("meshgate.phase", ""), limit.hits_addend.format)
            found.append((*entry, limit.apply_on_stream_done))
    return found


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_the_gateway_leaves_the_check_descriptors_out_when_extauthz_admits(transport: str) -> None:
    def limits(admission: str, enforcement: str = "ext_authz") -> list[tuple[str, str, str, bool]]:
        doc = admission_doc(enforcement, admission=admission)
        doc["gateway"]["ext_authz"] = {"transport": transport}
        return _limits(make_policy(doc))

    asked = contract.asked_tokens(transport)
    two_calls, in_check = limits("ratelimit"), limits("extauthz")
    assert ("tph", "check", asked, False) in two_calls and ("tpd", "check", asked, False) in two_calls
    # with enforcement ext_authz the requests quota rpm goes into the Check too; the rest is the same
    assert [lim for lim in two_calls if lim[1] != "check" and lim[0] != "rpm"] == in_check
    assert not any(lim[1] == "check" or lim[0] == "rpm" for lim in in_check)
    assert ("rpm", "", "", False) in two_calls
    for quota in ("tph", "tpd"):  # the charge and the estimate charge stay, at stream end
        charges = [lim for lim in in_check if lim[0] == quota]
        assert [(lim[1], lim[3]) for lim in charges] == [("charge", True), ("charge", True)]
    # auto: only the token checks move (rpm is a native quota there: Envoy's local rate limit)
    auto_two, auto_in = limits("ratelimit", "auto"), limits("extauthz", "auto")
    assert [lim for lim in auto_two if lim[1] != "check"] == auto_in


# --- 2. the plan and the policy ---------------------------------------------------------------------


def test_the_plan_holds_each_models_token_quotas_only_when_extauthz_admits() -> None:
    assert AdmissionPlan.of(make_policy(admission_doc(admission="ratelimit"))).quotas == {}
    plan = AdmissionPlan.of(make_policy(admission_doc()))
    assert {m: [q.name for q in qs] for m, qs in plan.quotas.items()} == {"llama-chat": ["tph", "tpd"]}
    assert plan.domain == "meshgate" and plan.fail_open is False  # failure_mode_deny defaults to true
    assert AdmissionPlan.of(make_policy(admission_doc(failure_mode_deny=False))).fail_open is True
    every = AdmissionPlan.of(make_policy(admission_doc(enforcement="ext_authz")))
    names = {m: [q.name for q in qs] for m, qs in every.quotas.items()}
    # rpm on the OpenAI models only: a KServe model keeps it on the rate limit filter (its 413 routes)
    assert names == {"llama-chat": ["tph", "tpd", "rpm"], "mini": ["rpm"]}
    # auto: rpm (fixed window) is Envoy's own there, never the Check's; a sliding one is the Check's
    auto = AdmissionPlan.of(make_policy(admission_doc()))
    assert {m: [q.name for q in qs] for m, qs in auto.quotas.items()} == {"llama-chat": ["tph", "tpd"]}
    sliding = admission_doc()
    next(q for q in sliding["quotas"] if q["name"] == "rpm")["algorithm"] = "sliding_window"
    policy = make_policy(sliding)
    names = {m: [q.name for q in qs] for m, qs in AdmissionPlan.of(policy).quotas.items()}
    assert names == {"llama-chat": ["tph", "tpd", "rpm"], "mini": ["rpm"]}
    kept = {m.name: {lim[0] for lim in _limits(policy, m.name)} for m in policy.models}
    assert "rpm" in kept["resnet"] and "rpm" not in kept["mini"] and "rpm" not in kept["llama-chat"]
    admission = Admission(ratelimit_service().servicer)
    assert not admission.applies("llama-chat")  # no policy yet
    admission.plan = admission.prepare(make_policy(admission_doc()))
    assert (
        admission.applies("llama-chat") and not admission.applies("mini") and not admission.applies("resnet")
    )


def test_native_enforcement_cannot_admit_in_extauthz() -> None:
    doc = admission_doc()
    doc["gateway"]["enforcement"] = "native"
    with pytest.raises(PolicyError) as caught:
        parse_policy(yaml.safe_dump(doc, sort_keys=False), "native.yaml")
    assert "gateway.ratelimit.admission: native: " in str(caught.value)
    doc["gateway"]["enforcement"] = "auto"  # auto sends these requests to extauthz: accepted, and admits
    assert contract.extauthz_admits(parse_policy(yaml.safe_dump(doc), "auto.yaml"))


# --- 3. Admission.admit on the real limiter ----------------------------------------------------------


def test_admitted_while_the_ask_fits_and_the_check_consumes_nothing() -> None:
    _, admission = wired(make_policy(admission_doc()))

    async def main() -> list[Any]:
        return [await admission.admit(ACME, tokens, openai=True) for tokens in (60, 60, 100)]

    for refusal, headers in asyncio.run(main()):
        assert refusal is None
        found = dict(headers)
        assert set(found) == {*XRL, "ratelimit-policy"} and found["ratelimit-policy"] == '"tph";q=100;w=3600'
        assert found["x-ratelimit-limit"] == "100" and found["x-ratelimit-remaining"] == "100"
        assert int(found["x-ratelimit-reset"]) > 0


def test_refused_over_what_is_left_as_the_gateway_answers_the_rate_limit_filters_429() -> None:
    _, admission = wired(make_policy(admission_doc()))

    async def main() -> list[Any]:
        return [await admission.admit(ACME, 101, openai=openai) for openai in (True, False)]

    (openai, headers), (plain, plain_headers) = asyncio.run(main())
    assert openai is not None and plain is not None
    assert openai.headers[: len(headers)] == headers  # the rate limit headers first
    found = dict(openai.headers)
    reset = found["x-ratelimit-reset"]
    assert found["x-ratelimit-remaining"] == "0" and found["x-envoy-ratelimited"] == "true"
    assert found["retry-after"] == reset and found["content-type"] == "application/json"
    assert openai.body == refusal_body("tph", reset)
    assert json.loads(openai.body)["error"] == {
        "message": f"Rate limit reached for quota tph; retry after {reset} s",
        "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded", "quota": "tph",
    }  # fmt: skip
    # outside OpenAI's paths: the rate limit filter's own 429, no body, no content-type, no retry-after
    assert plain.body == "" and plain.headers == (*plain_headers, ("x-envoy-ratelimited", "true"))
    for refusal in (openai, plain):
        assert {name for name, _ in refusal.headers} <= set(CLIENT_HEADERS)


def test_no_rate_limit_headers_with_response_headers_none() -> None:
    _, admission = wired(make_policy(admission_doc(response_headers="none")))

    async def main() -> list[Any]:
        return [await admission.admit(ACME, tokens, openai=True) for tokens in (10, 500)]

    (admitted, headers), (refusal, _) = asyncio.run(main())
    assert admitted is None and headers == ()
    assert refusal is not None
    assert dict(refusal.headers) == {"content-type": "application/json", "x-envoy-ratelimited": "true"}


def test_shadow_mode_never_refuses() -> None:
    _, admission = wired(make_policy(admission_doc(shadow_mode=True)))
    refusal, headers = asyncio.run(admission.admit(ACME, 5000, openai=True))
    assert refusal is None and dict(headers)["x-ratelimit-remaining"] == "0"  # reported, not refused


def test_the_admission_reads_the_stream_end_charges_and_each_tenant_has_its_counter() -> None:
    policy = make_policy(admission_doc())
    service, admission = wired(policy)
    charge = (("quota", "tph"), ("tenant", "acme"), ("meshgate.phase", "charge"))

    async def main() -> list[Any]:
        # what the rate limit filter sends at stream end: 90 tokens used by acme
        await service.servicer.decide(Request("meshgate", (Descriptor(charge, hits_addend=90),)))
        return [
            await admission.admit(ACME, 20, openai=True),
            await admission.admit(ACME, 10, openai=True),
            await admission.admit({**ACME, "tenant": "globex"}, 20, openai=True),
        ]

    (over, _), (fits, left), (other, other_left) = asyncio.run(main())
    assert over is not None and json.loads(over.body)["error"]["quota"] == "tph"
    assert fits is None and dict(left)["x-ratelimit-remaining"] == "10"
    assert other is None and dict(other_left)["x-ratelimit-remaining"] == "100"


# --- 4. a store that cannot answer ---------------------------------------------------------------


def test_a_store_failure_fails_closed_or_open_as_failure_mode_deny_says() -> None:
    doc = admission_doc()
    _, closed = wired(make_policy(doc), DownStore())
    decision = decide(make_table(doc), chat(5))
    assert decision.allowed and step.admits(closed, decision)

    async def fail_closed() -> None:
        with pytest.raises(StoreUnavailable):
            await closed.admit(ACME, 5, openai=True)
        with pytest.raises(Unavailable, match="admission: "):
            await step.admit(closed, decision, openai=True)

    asyncio.run(fail_closed())
    _, open_ = wired(make_policy(admission_doc(failure_mode_deny=False)), DownStore())
    assert asyncio.run(open_.admit(ACME, 5, openai=True)) == (None, ())


# --- 5. through ExtAuthzService ----------------------------------------------------------------------


def test_check_message_adds_the_headers_when_admitted_and_answers_429_when_over(tmp_path: Path) -> None:
    svc = gateway(tmp_path, admission_doc())

    async def main() -> list[external_auth_pb2.CheckResponse]:
        return [
            await svc.check_message(chat(5)),
            await svc.check_message(chat(5, x_api_key=API_KEY)),
            await svc.check_message(chat(500)),
            await svc.check_message(chat(5, "mini")),
        ]

    jwt_ok, key_ok, over, mini = asyncio.run(main())
    for ok in (jwt_ok, key_ok):
        assert ok.HasField("ok_response")
        added = options(ok.ok_response.response_headers_to_add)
        assert added["x-ratelimit-limit"] == "100" and added["x-ratelimit-remaining"] == "100"
        assert set(added) == {*XRL, "ratelimit-policy"}
    assert_refused_429(over, "tph")
    assert over.status.code == 8  # RESOURCE_EXHAUSTED
    assert mini.HasField("ok_response") and len(mini.ok_response.response_headers_to_add) == 0


def test_requests_quotas_too_with_enforcement_ext_authz_all_or_nothing(tmp_path: Path) -> None:
    """Every request reaches the Check: the requests quota rpm (2 a minute here) of the OpenAI models is
    decided there with the token quotas, in one request to the limiter (a refused request consumes none
    of its counters); a KServe model's stays on the rate limit filter (no admission in the Check)."""
    doc = admission_doc("ext_authz")
    next(q for q in doc["quotas"] if q["name"] == "rpm")["limit"] = 2
    svc = gateway(tmp_path, doc)
    infer = CheckInput(
        method="POST", path="/v2/models/resnet/infer", headers={"authorization": f"Bearer {mint()}"}
    )

    async def main() -> list[external_auth_pb2.CheckResponse]:
        return [
            await svc.check_message(chat(500)),  # over tph: refused, rpm not consumed
            await svc.check_message(chat(5, "mini")),
            await svc.check_message(chat(5)),  # rpm spent (2)
            await svc.check_message(chat(5, "mini")),
            await svc.check_message(chat(5)),
            await svc.check_message(infer),  # KServe: not decided here
        ]

    over_tokens, first, second, third, fourth, kserve = asyncio.run(main())
    assert_refused_429(over_tokens, "tph")
    assert first.HasField("ok_response") and second.HasField("ok_response")
    assert options(first.ok_response.response_headers_to_add)["x-ratelimit-remaining"] == "1"
    assert_refused_429(third, "rpm")
    assert_refused_429(fourth, "rpm")
    assert kserve.HasField("ok_response") and len(kserve.ok_response.response_headers_to_add) == 0


def test_check_async_answers_the_same_on_the_wire_and_check_never_admits(tmp_path: Path) -> None:
    svc = gateway(tmp_path, admission_doc())
    admitted, over = grpc_request(chat(5)), grpc_request(chat(500))

    async def main() -> list[bytes]:
        return [await svc.check_async(admitted), await svc.check_async(over), await svc.check_async(over)]

    ok, *refused = (external_auth_pb2.CheckResponse.FromString(b) for b in asyncio.run(main()))
    assert options(ok.ok_response.response_headers_to_add)["x-ratelimit-remaining"] == "100"
    for response in refused:  # the second from the decision cache: admitted all the same
        assert_refused_429(response, "tph")
    sync = external_auth_pb2.CheckResponse.FromString(svc.check(over))
    assert sync.HasField("ok_response") and len(sync.ok_response.response_headers_to_add) == 0


def test_only_allowed_requests_for_token_quota_models_consult_the_store(tmp_path: Path) -> None:
    svc = gateway(tmp_path, admission_doc(), DownStore())  # failure_mode_deny: an admission would raise

    async def main() -> list[external_auth_pb2.CheckResponse]:
        mini = await svc.check_message(chat(5, "mini"))
        anonymous = await svc.check_message(chat(5, authorization=""))
        with pytest.raises(Unavailable):
            await svc.check_message(chat(5))
        return [mini, anonymous]

    mini, anonymous = asyncio.run(main())
    assert mini.HasField("ok_response") and len(mini.ok_response.response_headers_to_add) == 0
    assert anonymous.denied_response.status.code == 401


def test_a_store_failure_admits_without_headers_when_failure_mode_deny_is_off(tmp_path: Path) -> None:
    svc = gateway(tmp_path, admission_doc(failure_mode_deny=False), DownStore())
    ok = asyncio.run(svc.check_message(chat(500)))
    assert ok.HasField("ok_response") and len(ok.ok_response.response_headers_to_add) == 0


# --- 6. over HTTP, and what the gateway lets reach the client ----------------------------------------


def _http(answer: bytes) -> tuple[str, list[str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, lines, body


@pytest.mark.parametrize("style", ["x-ratelimit", "draft-03"])
def test_the_http_answer_carries_the_headers_the_gateway_lets_through(tmp_path: Path, style: str) -> None:
    svc = gateway(tmp_path, admission_doc(response_headers=style))

    async def main() -> list[external_auth_pb2.CheckResponse]:
        return [await svc.check_message(chat(5)), await svc.check_message(chat(500))]

    ok, over = asyncio.run(main())
    added = options(ok.ok_response.response_headers_to_add)
    prefix = "x-" if style == "x-ratelimit" else ""
    assert set(added) == {f"{prefix}ratelimit-{h}" for h in ("limit", "remaining", "reset")} | {
        "ratelimit-policy"
    }
    assert set(added) <= set(RATE_LIMIT_HEADERS)  # allowed_client_headers_on_success lets them through
    status, lines, _ = _http(to_http(ok))
    assert status == "HTTP/1.1 200 OK"
    assert all(f"{name}: {value}" in lines for name, value in added.items())
    refused = options(over.denied_response.headers)
    assert refused["x-envoy-ratelimited"] == "true"
    assert set(refused) <= set(CLIENT_HEADERS)  # allowed_client_headers lets every one through
    status, lines, body = _http(to_http(over))
    assert status.startswith("HTTP/1.1 429") and body == over.denied_response.body.encode()
    assert "x-envoy-ratelimited: true" in lines
