"""Who was refused by which quota: the RateLimit-Policy header names the quota, every refusal is counted
per (quota, tenant, model) with the policy's names only, and logged on meshgate.ratelimit.audit; the
chargeback counters are a family with tenant and model labels. The whole RateLimitService as `meshgate
serve` builds it, over gRPC on port 0."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client import CollectorRegistry

from meshgate.contract import REFUSED_KEY
from meshgate.health import Health
from meshgate.policy.store import PolicyStore
from meshgate.ratelimit import MemoryStore
from meshgate.ratelimit.service import RateLimitService

GOOD = Path(__file__).parent.parent / "fixtures" / "ratelimit" / "good"
OK, OVER = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
POLICY = """
gateway: {ratelimit: {domain: gw, response_headers: x-ratelimit}}
tenants: [{name: acme, quotas: [tenant-rpm, user-rpd]}]
models:
  - {name: demo, versions: [{name: v1, endpoints: ["127.0.0.1:1"]}]}
  - {name: chat, protocol: openai, versions: [{name: v1, endpoints: ["127.0.0.1:2"]}]}
quotas:
  - {name: tenant-rpm, per: [tenant, model], limit: 2, window: minute}
  - {name: user-rpd, per: [tenant, user], limit: 100, window: day}
"""
TENANT = (("quota", "tenant-rpm"), ("tenant", "acme"), ("model", "demo"))
USER = (("quota", "user-rpd"), ("tenant", "acme"), ("user", "bob"))


def rls(
    domain: str, *descriptors: Sequence[tuple[str, str]], hits: int | None = None, limit: int | None = None
) -> rls_pb2.RateLimitRequest:
    """A request; `hits` on every descriptor, `limit` (per minute) overriding the first one's."""
    pb = rls_pb2.RateLimitRequest(domain=domain)
    for entries in descriptors:
        d = pb.descriptors.add()
        for key, value in entries:
            d.entries.add(key=key, value=value)
        if hits is not None:
            d.hits_addend.value = hits
    if limit is not None:
        pb.descriptors[0].limit.requests_per_unit = limit
        pb.descriptors[0].limit.unit = rls_pb2.RateLimitResponse.RateLimit.MINUTE
    return pb


def user(name: str) -> tuple[tuple[str, str], ...]:
    return (("quota", "user-rpd"), ("tenant", "acme"), ("user", name))


@asynccontextmanager
async def service(tmp_path: Path) -> AsyncIterator[tuple[rls_pb2_grpc.RateLimitServiceStub, CollectorRegistry]]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    limits = tmp_path / "limits"
    limits.mkdir()
    shutil.copy(GOOD / "compat.yaml", limits / "compat.yaml")
    registry = CollectorRegistry()
    store = PolicyStore(tmp_path / "policy.yaml", registry=registry)
    store.reload()
    rl = RateLimitService(
        MemoryStore(), store_name="memory", health=Health(registry=registry), registry=registry, config_dir=limits
    )
    rl.load_config_dir()
    store.subscribe("ratelimit", rl.prepare)
    await rl.start()
    server = grpc.aio.server()
    rl.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield rls_pb2_grpc.RateLimitServiceStub(channel), registry
    finally:
        await channel.close()
        await server.stop(None)
        await rl.stop()


def headers(answer: rls_pb2.RateLimitResponse) -> dict[str, str]:
    return {h.key: h.value for h in answer.response_headers_to_add}


def test_the_rate_limit_headers_name_the_quota(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(tmp_path) as (stub, _):
            first = await stub.ShouldRateLimit(rls("gw", TENANT, USER))
            assert headers(first) == {
                "X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "1", "X-RateLimit-Reset": headers(first)[
                    "X-RateLimit-Reset"], "RateLimit-Policy": '"tenant-rpm";q=2;w=60',
            }  # fmt: skip
            await stub.ShouldRateLimit(rls("gw", TENANT, USER))
            refused = await stub.ShouldRateLimit(rls("gw", TENANT, USER))
            assert refused.overall_code == OVER
            assert headers(refused)["RateLimit-Policy"] == '"tenant-rpm";q=2;w=60'

            # requests of one shape (their kept response updated in place), the worst quota changing
            chat = (("quota", "tenant-rpm"), ("tenant", "acme"), ("model", "chat"))
            carol, dave = user("carol"), user("dave")
            await stub.ShouldRateLimit(rls("gw", dave, hits=99))
            await stub.ShouldRateLimit(rls("gw", chat, hits=1))
            for who, quota in ((carol, '"tenant-rpm";q=2;w=60'), (dave, '"user-rpd";q=100;w=86400'),
                               (carol, '"tenant-rpm";q=2;w=60')):  # fmt: skip
                answer = await stub.ShouldRateLimit(rls("gw", who, chat, hits=0))
                assert headers(answer)["RateLimit-Policy"] == quota

            # a limit override's rule has no name: no RateLimit-Policy while it is the worst
            for who, quota in ((carol, None), (dave, '"user-rpd";q=100;w=86400'), (carol, None)):
                answer = await stub.ShouldRateLimit(rls("gw", (("x", "y"),), who, hits=0, limit=10))
                assert headers(answer).get("RateLimit-Policy") == quota
                assert headers(answer)["X-RateLimit-Limit"] == ("10" if quota is None else "100")

    asyncio.run(main())


def refused(answer: rls_pb2.RateLimitResponse) -> str | None:
    """The quotas an answer names as refusing (the dynamic metadata the gateway's 429 reads)."""
    fields = answer.dynamic_metadata.fields
    return fields[REFUSED_KEY].string_value if REFUSED_KEY in fields else None


def test_a_refusal_names_only_the_quotas_that_refused(tmp_path: Path) -> None:
    """Two quotas count the request; only the second is over its limit: the answer's metadata names it
    alone (not every quota counting the request), on every refusal of the kept response, and is gone
    from the next answer that refuses nothing."""

    async def main() -> None:
        async with service(tmp_path) as (stub, _):
            fills = rls("gw", user("erin"), hits=100)
            assert refused(await stub.ShouldRateLimit(fills)) is None  # 100 of 100: admitted
            for _ in range(2):  # the same request again: its kept response updated in place
                answer = await stub.ShouldRateLimit(rls("gw", TENANT, user("erin")))
                assert answer.overall_code == OVER
                assert [s.code for s in answer.statuses] == [OK, OVER]
                assert refused(answer) == "user-rpd"
            # the same shape, another user: admitted twice (a refused request added nothing), then
            # the first quota refuses alone
            for _ in range(2):
                answer = await stub.ShouldRateLimit(rls("gw", TENANT, user("frank")))
                assert answer.overall_code == OK and refused(answer) is None
            answer = await stub.ShouldRateLimit(rls("gw", TENANT, user("frank")))
            assert [s.code for s in answer.statuses] == [OVER, OK] and refused(answer) == "tenant-rpm"
            # both over: both named, in descriptor order
            answer = await stub.ShouldRateLimit(rls("gw", TENANT, user("erin")))
            assert refused(answer) == "tenant-rpm,user-rpd"

    asyncio.run(main())


def test_refusals_are_counted_per_quota_tenant_and_model_with_declared_names(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(tmp_path) as (stub, registry):
            for _ in range(4):
                await stub.ShouldRateLimit(rls("gw", TENANT, USER))
            made_up = (("quota", "tenant-rpm"), ("tenant", "acme"), ("model", "made-up"))
            await stub.ShouldRateLimit(rls("gw", made_up))  # matches no rule: never refused
            for _ in range(3):
                await stub.ShouldRateLimit(rls("compat", [("path", "/admin")]))
            sample = registry.get_sample_value
            labels = {"domain": "gw", "quota": "tenant-rpm", "tenant": "acme", "model": "demo"}
            assert sample("meshgate_ratelimit_refusals_total", labels) == 2
            assert sample("meshgate_ratelimit_refusals_total", {**labels, "model": "made-up"}) is None
            other = {"domain": "compat", "quota": "other", "tenant": "unknown", "model": "unknown"}
            assert sample("meshgate_ratelimit_refusals_total", other) == 2  # a YAML rule (limit 1)

    asyncio.run(main())


def test_each_refusal_is_an_audit_line_naming_the_quota(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with service(tmp_path) as (stub, _):
            for _ in range(5):
                await stub.ShouldRateLimit(rls("gw", TENANT, USER))
            for _ in range(2):
                await stub.ShouldRateLimit(rls("compat", [("path", "/admin")]))
        # stop() flushed the batch

    with caplog.at_level(logging.INFO, logger="meshgate.ratelimit.audit"):
        asyncio.run(main())
    lines = [json.loads(line) for r in caplog.records if r.name == "meshgate.ratelimit.audit"
             for line in r.getMessage().splitlines()]  # fmt: skip
    by_quota = {line["quota"]: line for line in lines}
    assert by_quota["tenant-rpm"] | {"ts": 0, "reset": 0} == {
        "audit": "ratelimit", "ts": 0, "decision": "deny", "code": "over_limit", "status": 429,
        "quota": "tenant-rpm", "tenant": "acme", "user": None, "model": "demo", "domain": "gw",
        "limit": 2, "window": "minute", "reset": 0, "count": 3,
    }  # fmt: skip
    # a YAML rule's descriptor values (anything a request carries) are never logged
    assert by_quota["other"]["tenant"] is None and "/admin" not in json.dumps(lines)
    assert len(lines) == 2


def test_refusal_lines_are_bounded_per_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with service(tmp_path) as (stub, _):
            for user in range(150):
                entries = (("quota", "user-rpd"), ("tenant", "acme"), ("user", f"u{user}" + "x" * 400))
                await stub.ShouldRateLimit(rls("gw", entries, hits=101))

    with caplog.at_level(logging.INFO, logger="meshgate.ratelimit.audit"):
        asyncio.run(main())
    lines = [json.loads(line) for r in caplog.records if r.name == "meshgate.ratelimit.audit"
             for line in r.getMessage().splitlines()]  # fmt: skip
    assert len(lines) == 101
    assert lines[-1]["dropped"] == 50
    assert all(len(line["user"].encode()) <= 256 for line in lines[:-1])


def test_chargeback_counters_by_tenant_and_model(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(tmp_path) as (stub, registry):
            for kind, hits in (("prompt_tokens", 12), ("completion_tokens", 30)):
                usage = (("meshgate.usage", kind), ("tenant", "acme"), ("model", "chat"))
                await stub.ShouldRateLimit(rls("gw", usage, hits=hits))
            undeclared = (("meshgate.usage", "prompt_tokens"), ("tenant", "acme"), ("model", "demo"))
            await stub.ShouldRateLimit(rls("gw", undeclared, hits=5))  # not an OpenAI model
            sample = registry.get_sample_value
            labels = {"tenant": "acme", "model": "chat"}
            assert sample("meshgate_ratelimit_usage_total", {**labels, "kind": "prompt_tokens"}) == 12
            assert sample("meshgate_ratelimit_usage_total", {**labels, "kind": "completion_tokens"}) == 30
            assert sample("meshgate_ratelimit_usage_total", {"kind": "prompt_tokens", "tenant": "acme",
                                                              "model": "demo"}) is None  # fmt: skip

    asyncio.run(main())
