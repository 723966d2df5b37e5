"""ExtAuthzService under hostile or broken input, on a real grpc.aio server (port 0) with real clients:
malformed protobuf, deeply nested JSON, many client x-meshgate-* header names, a JWKS server that is
down at start-up, and the "extauthz_keys" health component.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import tracemalloc
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from meshgate.extauthz import ExtAuthzService, JwksRefresher
from meshgate.extauthz.bounds import RESPONSE_MEMO_BYTES
from meshgate.extauthz.service import KEYS_COMPONENT
from meshgate.health import Health
from meshgate.policy.store import PolicyStore
from tests.harness.grpc_service import serving as serving_channel
from tests.service.test_extauthz_service import check_request, new_service, run, serving
from tests.unit.test_extauthz_support import API_KEY, LateJwks, make_policy, mint, policy_doc

AUTHZ = "envoy.service.auth.v3.Authorization"
CHECK = f"/{AUTHZ}/Check"
MiB = 1 << 20


def with_health(service: ExtAuthzService, health: Health) -> contextlib.AbstractAsyncContextManager[grpc.aio.Channel]:
    """The service and grpc.health.v1 on one real server (as meshgate serve puts them)."""
    return serving_channel(service, health=health)


async def health_status(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int((await stub.Check(health_pb2.HealthCheckRequest(service=service))).status)


def test_malformed_request_is_invalid_argument_logged_at_a_bounded_rate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service, (_, registry) = new_service(tmp_path)

    async def scenario() -> None:
        async with serving_channel(service) as channel:
            raw = channel.unary_unary(CHECK)  # bytes in, bytes out: no client-side serialization
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            for garbage in [b"\xff\xff\xff", b"\x0a\x05abc", b"\x12" + b"\xff" * 40] * 10:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await raw(garbage)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert caught.value.details() == "request is not a CheckRequest"
            ok = await stub.Check(check_request(x_api_key=API_KEY))
            assert ok.status.code == code_pb2.OK  # the server is fine

    with caplog.at_level(logging.WARNING):
        run(scenario)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].name == "meshgate.extauthz"
    assert warnings[0].exc_info is None and "malformed CheckRequest" in warnings[0].getMessage()
    assert registry.get_sample_value("meshgate_extauthz_invalid_requests_total") == 30.0


def test_deeply_nested_json_is_invalid_body_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service, (_, registry) = new_service(tmp_path)

    async def scenario() -> None:
        async with serving(service) as stub:
            for depth in (100_000, 2_000):
                body = b'{"model":' * depth + b"1" + b"}" * depth
                response = await stub.Check(check_request("/v1/chat/completions", body, x_api_key=API_KEY))
                assert response.denied_response.status.code == 400
                assert json.loads(response.denied_response.body)["error"]["code"] == "invalid_body"  # OpenAI shape

    with caplog.at_level(logging.WARNING):
        run(scenario)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert registry.get_sample_value("meshgate_extauthz_unavailable_total", {"reason": "internal"}) is None


def test_many_client_header_names_keep_the_response_memo_within_its_budget(tmp_path: Path) -> None:
    """The fault run: a valid key with many distinct x-meshgate-* header names grew the memo of cached
    responses by 190 MiB in 200 requests. Each set here is 64 KiB of names: over the per-entry bound,
    so those responses are built for their request only."""
    service, (_, registry) = new_service(tmp_path)
    requests = [
        check_request(x_api_key=API_KEY, **{f"x_meshgate_{i}_{j}_{'h' * 240}": "1" for j in range(256)})
        for i in range(200)
    ]

    async def scenario() -> None:
        async with serving(service) as stub:
            first = await stub.Check(requests[0])  # the decision is now cached: the rest hit it
            assert first.status.code == code_pb2.OK and len(first.ok_response.headers_to_remove) > 256

            def checks() -> None:
                for request in requests[1:]:
                    service.check(request)  # what the servicer calls, without the transport

            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            checks()
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            assert grown < 2 * MiB  # 199 x (64 KiB of names + a 64 KiB response) = 25 MiB before
            last = await stub.Check(requests[-1])
            assert last.status.code == code_pb2.OK
            assert f"x-meshgate-199-0-{'h' * 240}" in last.ok_response.headers_to_remove

    run(scenario)
    held = registry.get_sample_value("meshgate_extauthz_cache_bytes", {"cache": "response"})
    budget = registry.get_sample_value("meshgate_extauthz_cache_budget_bytes", {"cache": "response"})
    assert held is not None and held < 64 << 10 and budget == RESPONSE_MEMO_BYTES


def jwks_policy(url: str, **cache: str) -> dict[str, Any]:
    return policy_doc(issuer={"jwks_uri": url, "jwks_cache": cache} if cache else {"jwks_uri": url})


def test_jwks_down_at_start_first_jwt_passes_one_fetch_after_it_returns(tmp_path: Path) -> None:
    """A token for an issuer without keys asks for a fetch at once: the scheduled retry is 30 s away
    here, so only that early fetch can load the keys the next token needs."""
    refresher = JwksRefresher(retry_first=30.0, retry_cap=60.0, missing_keys_refetch=0.0)
    with LateJwks() as jwks:
        service, _ = new_service(tmp_path, jwks_policy(jwks.url), refresher=refresher)
        token = mint()

        async def scenario() -> None:
            async with serving(service) as stub:
                assert refresher.attempts == 1  # start() waited for the first fetch: refused
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Check(check_request(authorization=f"Bearer {token}"))
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                await refresher.wait_attempts(2, timeout=10.0)  # the fetch it asked for: refused too
                jwks.up()
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Check(check_request(authorization=f"Bearer {token}"))
                await refresher.wait_attempts(3, timeout=10.0)
                ok = await stub.Check(check_request(authorization=f"Bearer {token}"))
                assert ok.status.code == code_pb2.OK
                assert jwks.hits == 1

        run(scenario)


def test_jwks_failure_is_logged_with_its_reason_and_no_url_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with LateJwks() as jwks:
        url = jwks.url.replace("http://", "http://reader:s3cr3t-pass@") + "?access_token=t0k3n-value"
        service, _ = new_service(tmp_path, jwks_policy(url), refresher=JwksRefresher())

        async def scenario() -> None:
            async with serving(service):
                pass

        with caplog.at_level(logging.WARNING, logger="meshgate.extauthz.jwks"):
            run(scenario)
    [record] = [r for r in caplog.records if "JWKS fetch" in r.getMessage()]
    message = record.getMessage()
    assert f"from http://127.0.0.1:{jwks.port}/jwks.json failed (ConnectError: " in message, message
    assert "s3cr3t" not in message and "t0k3n" not in message and "reader" not in message
    assert "()" not in message


def test_keys_health_is_not_serving_until_an_issuer_has_keys(tmp_path: Path) -> None:
    """ "extauthz_keys" is scoped to the Authorization service: the overall status ("", the pod's
    readiness) stays SERVING; Authorization turns SERVING once the late JWKS server has been fetched."""
    refresher = JwksRefresher(retry_first=30.0, retry_cap=60.0, missing_keys_refetch=0.0)
    health = Health(registry=CollectorRegistry())
    with LateJwks() as jwks:
        store = PolicyStore(tmp_path / "policy.yaml")
        service = ExtAuthzService(store, registry=CollectorRegistry(), refresher=refresher, health=health)
        store.apply(make_policy(jwks_policy(jwks.url)))
        token = mint()

        async def scenario() -> None:
            async with with_health(service, health) as channel:
                assert await health_status(channel, AUTHZ) == health_pb2.HealthCheckResponse.NOT_SERVING
                assert await health_status(channel, "") == health_pb2.HealthCheckResponse.SERVING
                assert health.components()[KEYS_COMPONENT] is False
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service=AUTHZ)
                )
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
                jwks.up()
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Check(check_request(authorization=f"Bearer {token}"))  # asks for a fetch
                assert (
                    await asyncio.wait_for(watch.read(), 10.0)
                ).status == health_pb2.HealthCheckResponse.SERVING
                watch.cancel()
                assert (
                    await stub.Check(check_request(authorization=f"Bearer {token}"))
                ).status.code == code_pb2.OK

        run(scenario)


def test_keys_health_one_issuer_with_keys_is_enough(tmp_path: Path) -> None:
    """Multi-issuer: an issuer whose IdP never answers does not take extauthz out while another issuer
    has keys (its tenants keep being served); a policy without issuers (API keys only) is up too."""
    health = Health(registry=CollectorRegistry())
    with LateJwks() as down:
        doc = policy_doc()  # issuer "test" has inline keys
        other = {k: v for k, v in doc["issuers"][0].items() if k != "jwks"}
        doc["issuers"].append(
            {**other, "name": "other", "issuer": "https://other.test", "jwks_uri": down.url}
        )
        store = PolicyStore(tmp_path / "policy.yaml")
        service = ExtAuthzService(
            store, registry=CollectorRegistry(), health=health, initial_keys_timeout=10.0
        )
        store.apply(make_policy(doc))

        async def scenario() -> None:
            async with with_health(service, health) as channel:
                assert await health_status(channel, AUTHZ) == health_pb2.HealthCheckResponse.SERVING
                no_issuers = policy_doc()
                no_issuers["issuers"] = []
                assert store.apply(make_policy(no_issuers)) is True
                assert service.keys_up() is True

        run(scenario)
