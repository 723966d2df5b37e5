"""ExtAuthzService on a real grpc.aio server (port 0), called through a real Authorization stub."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from meshgate.extauthz import ExtAuthzService, JwksRefresher
from meshgate.policy.store import PolicyStore
from tests.harness.grpc_service import serving as serving_service
from tests.unit.test_extauthz_support import API_KEY, make_policy, mint, policy_doc, public_jwks

Stub = external_auth_pb2_grpc.AuthorizationStub


@contextlib.asynccontextmanager
async def serving(service: ExtAuthzService) -> AsyncIterator[Stub]:
    async with serving_service(service) as channel:
        yield Stub(channel)


def check_request(path: str = "/v2/models/resnet/infer", body: bytes = b"", **headers: str) -> Any:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.raw_body = "POST", path, body
    http.headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    return request


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def new_service(
    tmp_path: Path, doc: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[ExtAuthzService, Any]:
    store = PolicyStore(tmp_path / "policy.yaml")
    registry = CollectorRegistry()
    service = ExtAuthzService(store, registry=registry, **kwargs)
    store.apply(make_policy(doc))
    return service, (store, registry)


def test_allow_and_deny_over_grpc(tmp_path: Path) -> None:
    service, (_, registry) = new_service(tmp_path)

    async def scenario() -> None:
        async with serving(service) as stub:
            ok = await stub.Check(check_request(authorization=f"Bearer {mint()}", x_meshgate_tenant="victim"))
            assert ok.status.code == code_pb2.OK
            set_headers = {o.header.key: o.header.value for o in ok.ok_response.headers}
            assert set_headers["x-meshgate-tenant"] == "acme"
            assert set_headers["x-meshgate-model"] == "resnet"
            missing = await stub.Check(check_request())
            assert missing.status.code == code_pb2.UNAUTHENTICATED
            assert missing.denied_response.status.code == 401
            assert json.loads(missing.denied_response.body)["error"] == "missing_credentials"

    run(scenario)
    value = registry.get_sample_value(
        "meshgate_extauthz_decisions_total",
        {"decision": "allow", "code": "ok", "tenant": "acme", "model": "resnet"},
    )
    assert value == 1.0
    assert registry.get_sample_value(
        "meshgate_extauthz_decisions_total",
        {"decision": "deny", "code": "missing_credentials", "tenant": "unknown", "model": "unknown"},
    ) == 1.0  # fmt: skip


def test_policy_swap_changes_decisions_and_clears_the_cache(tmp_path: Path) -> None:
    service, (store, _) = new_service(tmp_path)
    token = mint()

    async def scenario() -> None:
        async with serving(service) as stub:
            first = await stub.Check(check_request(authorization=f"Bearer {token}"))
            assert first.status.code == code_pb2.OK
            doc = policy_doc()
            doc["roles"][0]["models"] = ["llama-chat"]  # invoker may no longer call resnet
            assert store.apply(make_policy(doc)) is True
            second = await stub.Check(check_request(authorization=f"Bearer {token}"))
            assert json.loads(second.denied_response.body)["error"] == "role_forbidden"

    run(scenario)


def test_no_policy_is_unavailable(tmp_path: Path) -> None:
    service = ExtAuthzService(PolicyStore(tmp_path / "none.yaml"), registry=CollectorRegistry())

    async def scenario() -> None:
        async with serving(service) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Check(check_request(authorization=f"Bearer {mint()}"))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    run(scenario)


def test_internal_error_is_unavailable_never_allow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service, _ = new_service(tmp_path)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("meshgate.extauthz.answers.to_response", broken)

    async def scenario() -> None:
        async with serving(service) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Check(check_request(authorization=f"Bearer {mint()}"))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    run(scenario)


def test_remote_jwks_with_key_rotation(tmp_path: Path) -> None:
    """Keys come from the refresher; a token with a new kid is refused until the refetch it triggers."""
    jwks = public_jwks()
    served = {"keys": [k for k in jwks["keys"] if k["kid"] != "ec-1"]}
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json=served, headers={"cache-control": "max-age=3600"})

    refresher = JwksRefresher(
        client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(handler))
    )
    doc = policy_doc(
        issuer={"jwks_uri": "http://idp.test/jwks.json", "jwks_cache": {"unknown_kid_refetch": "1ms"}}
    )
    service, _ = new_service(tmp_path, doc, refresher=refresher)

    async def scenario() -> None:
        async with serving(service) as stub:
            assert calls == ["/jwks.json"]  # start() waited for the first fetch
            ok = await stub.Check(check_request(authorization=f"Bearer {mint()}"))
            assert ok.status.code == code_pb2.OK
            served["keys"] = jwks["keys"]  # the IdP rotates in ec-1
            rotated = mint("ES256", kid="ec-1")
            first = await stub.Check(check_request(authorization=f"Bearer {rotated}"))
            assert json.loads(first.denied_response.body)["error"] == "token_unknown_kid"
            await refresher.wait_attempts(2, timeout=10.0)  # the refetch the unknown kid asked for
            again = await stub.Check(check_request(authorization=f"Bearer {rotated}"))
            assert again.status.code == code_pb2.OK

    run(scenario)


def test_span_continues_traceparent_and_audit_has_no_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service, _ = new_service(tmp_path, tracer_provider=provider)
    token = mint()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    async def scenario() -> None:
        async with serving(service) as stub:
            await stub.Check(check_request(
                authorization=f"Bearer {token}", traceparent=f"00-{trace_id}-00f067aa0ba902b7-01"
            ))  # fmt: skip
            await stub.Check(check_request(x_api_key=API_KEY, path="/v2/models/llama-chat/infer"))

    with caplog.at_level(logging.INFO, logger="meshgate.extauthz.audit"):
        run(scenario)
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    assert f"{spans[0].context.trace_id:032x}" == trace_id
    assert spans[0].attributes is not None and spans[0].attributes["meshgate.tenant"] == "acme"
    messages = [r.getMessage() for r in caplog.records if r.name == "meshgate.extauthz.audit"]
    lines = [line for message in messages for line in message.split("\n")]  # a record holds one loop turn
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert [r["code"] for r in records] == ["ok", "ok"]
    assert records[0]["decision_id"] and records[0]["tenant"] == "acme" and records[0]["model"] == "resnet"
    for line in lines:
        assert token not in line and token.split(".")[2] not in line and API_KEY not in line


def test_cached_decisions_get_their_own_decision_id_and_header_removals(tmp_path: Path) -> None:
    service, _ = new_service(tmp_path)
    token = mint()

    async def scenario() -> None:
        async with serving(service) as stub:
            plain = await stub.Check(check_request(authorization=f"Bearer {token}"))
            again = await stub.Check(check_request(authorization=f"Bearer {token}"))
            sneaky = await stub.Check(check_request(authorization=f"Bearer {token}", x_meshgate_debug="1"))
            ids = [
                {o.header.key: o.header.value for o in r.ok_response.headers}["x-meshgate-decision-id"]
                for r in (plain, again, sneaky)
            ]
            assert len(set(ids)) == 3
            assert "x-meshgate-debug" not in plain.ok_response.headers_to_remove
            assert "x-meshgate-debug" in sneaky.ok_response.headers_to_remove

    run(scenario)


def test_global_tracer_provider_set_later_gets_spans_continuing_traceparent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a provider a check makes no span; a global provider set later is picked up (it is asked
    for at most once a second: here at once) and its spans continue the request's traceparent."""
    monkeypatch.setattr("meshgate.extauthz.service._PROVIDER_RECHECK_S", 0.0)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service, _ = new_service(tmp_path)
    token = mint()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    async def scenario() -> None:
        async with serving(service) as stub:
            traced = check_request(
                authorization=f"Bearer {token}", traceparent=f"00-{trace_id}-{parent_id}-01"
            )
            assert (await stub.Check(traced)).status.code == code_pb2.OK
            monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
            assert (await stub.Check(traced)).status.code == code_pb2.OK

    run(scenario)
    spans = exporter.get_finished_spans()
    assert len(spans) == 1
    span = spans[0]
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == parent_id
    assert span.kind == trace.SpanKind.SERVER and span.attributes is not None
    assert span.attributes["meshgate.cache_hit"] is True and span.attributes["meshgate.decision"] == "allow"
