"""envoyproxy/ratelimit's own expectations of ShouldRateLimit, against meshgate's rate limit service over
a real gRPC channel (the servicer registered as `meshgate serve` registers it).

Each test names the upstream source it follows: envoyproxy/ratelimit test/service/ratelimit_test.go
(the service: statuses, overall code, shadow modes, unlimited, headers, errors), test/limiter/
base_limiter_test.go (limit_remaining, duration_until_reset, near limit) and README.md (replaces, limit
override, detailed_metric, hits_addend, depth). Differences kept on purpose are asserted as such and
listed in docs/ratelimit.md and docs/meshconfig.md: all-or-nothing counting, the draft-03 limit header
value, INVALID_ARGUMENT for a malformed request, and no quota_mode / response dynamic metadata.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client import CollectorRegistry

from meshgate.ratelimit import Limiter, MemoryStore, RateLimitServicer, Settings, Slot, StoreResult
from meshgate.ratelimit.config import ConfigError, load_config_dir, merge_domains
from meshgate.ratelimit.metrics import RateLimitMetrics
from meshgate.ratelimit.service import add_to_server

OK, OVER = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
MINUTE = rls_pb2.RateLimitResponse.RateLimit.MINUTE
T0 = 1_700_002_800.0 + 2  # two seconds into a minute (and an hour): 58 s until the window ends
MAX_UINT32 = 2**32 - 1

CONFIG = """
domain: up
descriptors:
  - {key: foo, value: bar, rate_limit: {unit: minute, requests_per_unit: 10}}
  - {key: unlimited, rate_limit: {unlimited: true}}
  - {key: hard, rate_limit: {unit: minute, requests_per_unit: 1}}
  - {key: soft, shadow_mode: true, rate_limit: {unit: minute, requests_per_unit: 1}}
  - {key: plan, value: standard, rate_limit: {unit: minute, requests_per_unit: 1, name: standard}}
  - {key: account, value: premium,
     rate_limit: {unit: minute, requests_per_unit: 5, name: premium, replaces: [{name: standard}]}}
  - {key: detailed, detailed_metric: true, rate_limit: {unit: minute, requests_per_unit: 100}}
  - key: nested
    descriptors:
      - {key: leaf, rate_limit: {unit: minute, requests_per_unit: 3}}
"""

Entries = Sequence[tuple[str, str]]


class Counting:
    def __init__(self) -> None:
        self.inner, self.keys = MemoryStore(), []  # type: ignore[var-annotated]

    async def apply(self, slots: Sequence[Slot], now: float) -> StoreResult:
        self.keys += [s.key for s in slots]
        return await self.inner.apply(slots, now)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


class Service:
    def __init__(
        self, stub: rls_pb2_grpc.RateLimitServiceStub, store: Counting, registry: CollectorRegistry
    ) -> None:
        self.stub, self.store, self.registry = stub, store, registry

    async def ask(self, *descriptors: Entries, hits: int = 0, **fields: Any) -> rls_pb2.RateLimitResponse:
        request = rls_pb2.RateLimitRequest(domain=fields.pop("domain", "up"), hits_addend=hits)
        for entries in descriptors:
            d = request.descriptors.add(**fields)
            for key, value in entries:
                d.entries.add(key=key, value=value)
        return await self.stub.ShouldRateLimit(request)


Run = Callable[..., None]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    (tmp_path / "up.yaml").write_text(CONFIG)

    def go(scenario: Callable[[Service], Awaitable[None]], **settings: Any) -> None:
        async def main() -> None:
            async with _Serving(tmp_path, settings) as service:
                await scenario(service)

        asyncio.run(main())

    return go


class _Serving:
    def __init__(self, directory: Path, settings: dict[str, Any]) -> None:
        self.directory, self.settings = directory, settings

    async def __aenter__(self) -> Service:
        registry = CollectorRegistry()
        metrics = RateLimitMetrics(registry)
        self.store = Counting()
        config = merge_domains(load_config_dir(self.directory))
        limiter = Limiter(
            self.store, config=config, settings=Settings(**self.settings), metrics=metrics, clock=lambda: T0
        )
        self.server = grpc.aio.server()
        add_to_server(RateLimitServicer(limiter, metrics, "memory"), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        return Service(rls_pb2_grpc.RateLimitServiceStub(self.channel), self.store, registry)

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.server.stop(None)


def test_no_rule_is_ok_without_a_limit(run: Run) -> None:
    """ratelimit_test.go TestService: a descriptor no rule matches is OK, no current_limit, remaining 0."""

    async def scenario(s: Service) -> None:
        answer = await s.ask([("hello", "world")])
        assert answer.overall_code == OK
        (status,) = answer.statuses
        assert status.code == OK and not status.HasField("current_limit") and status.limit_remaining == 0
        assert s.store.keys == []

    run(scenario)


def test_over_limit_status_and_overall_code(run: Run) -> None:
    """TestService: the limited descriptor OVER_LIMIT with its current_limit and remaining 0, the
    unmatched one OK; the overall code OVER_LIMIT. base_limiter_test.go: remaining counts down,
    duration_until_reset is the time to the window's end."""

    async def scenario(s: Service) -> None:
        first = await s.ask([("foo", "bar")], [("hello", "world")])
        assert first.statuses[0].limit_remaining == 9
        assert (
            first.statuses[0].current_limit.requests_per_unit == 10
            and first.statuses[0].current_limit.unit == MINUTE
        )
        assert first.statuses[0].duration_until_reset.seconds == 58
        answer = await s.ask([("foo", "bar")], [("hello", "world")], hits=20)
        assert answer.overall_code == OVER
        assert [st.code for st in answer.statuses] == [OVER, OK]
        assert answer.statuses[0].limit_remaining == 0 and not answer.statuses[1].HasField("current_limit")

    run(scenario)


def test_unlimited_reports_max_uint32_remaining_and_never_counts(run: Run) -> None:
    """TestUnlimited: an unlimited descriptor is OK with no current_limit, limit_remaining
    math.MaxUint32, and never reaches the cache."""

    async def scenario(s: Service) -> None:
        answer = await s.ask([("foo", "bar")], [("hello", "world")], [("unlimited", "x")])
        assert [st.limit_remaining for st in answer.statuses] == [9, 0, MAX_UINT32]
        assert not answer.statuses[2].HasField("current_limit") and answer.statuses[2].code == OK
        assert all("unlimited" not in key for key in s.store.keys)

    run(scenario)


def test_global_shadow_mode_keeps_the_statuses_and_admits(run: Run) -> None:
    """TestServiceGlobalShadowMode: overall OK even when a status is OVER_LIMIT (kept as such)."""

    async def scenario(s: Service) -> None:
        await s.ask([("hard", "x")])
        answer = await s.ask([("hard", "x")], [("hello", "world")])
        assert answer.overall_code == OK and [st.code for st in answer.statuses] == [OVER, OK]

    run(scenario, shadow_mode=True)


def test_rule_shadow_mode_reports_ok_and_mixed_rules_still_refuse(run: Run) -> None:
    """TestRuleShadowMode: a shadow rule's status is OK (with its current_limit) past its limit;
    TestMixedRuleShadowMode: a non-shadow rule over its limit still makes the overall OVER_LIMIT."""

    async def scenario(s: Service) -> None:
        for _ in range(2):
            answer = await s.ask([("soft", "x")])
        assert answer.overall_code == OK and answer.statuses[0].code == OK
        assert answer.statuses[0].current_limit.requests_per_unit == 1
        await s.ask([("hard", "y")])
        mixed = await s.ask([("soft", "x")], [("hard", "y")])
        assert mixed.overall_code == OVER and [st.code for st in mixed.statuses] == [OK, OVER]

    run(scenario)


def test_response_headers(run: Run) -> None:
    """TestServiceWithDefaultRatelimitHeaders: RateLimit-Limit / -Remaining / -Reset of the most
    constraining descriptor. Kept on purpose: the limit's value is the draft-03 form
    `10, 10;w=60` (as Envoy's own DRAFT_VERSION_03 writes it), upstream writes `10`."""

    async def scenario(s: Service) -> None:
        answer = await s.ask([("foo", "bar")], [("hard", "z")])
        headers = {h.key: h.value for h in answer.response_headers_to_add}
        assert headers == {
            "RateLimit-Limit": "1, 1;w=60",
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": "58",
        }

    run(scenario, response_headers="draft-03")


def test_malformed_requests_are_errors(run: Run) -> None:
    """TestEmptyDomain, TestEmptyDescriptors: the same messages. Kept on purpose: INVALID_ARGUMENT
    (upstream returns a plain error, which gRPC sends as UNKNOWN); Envoy treats both as a failed call."""

    async def scenario(s: Service) -> None:
        for fields, message in (
            ({"domain": ""}, "domain must not be empty"),
            ({}, "descriptor list must not be empty"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                if fields:
                    await s.ask([("a", "b")], **fields)
                else:
                    await s.ask()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (caught.value.details() or "")

    run(scenario)


def test_hits_addend_of_the_request_and_of_a_descriptor(run: Run) -> None:
    """README (hits_addend): the request's hits_addend counts that many; a descriptor's own overrides it."""

    async def scenario(s: Service) -> None:
        answer = await s.ask([("foo", "bar")], hits=4)
        assert answer.statuses[0].limit_remaining == 6
        answer = await s.ask([("foo", "bar")], hits=4, hits_addend={"value": 1})
        assert answer.statuses[0].limit_remaining == 5

    run(scenario)


def test_replaces_drops_the_named_limit(run: Run) -> None:
    """README (replaces): when `premium` applies, the `standard` limit is not applied."""

    async def scenario(s: Service) -> None:
        for _ in range(3):
            answer = await s.ask([("plan", "standard")], [("account", "premium")])
        assert answer.overall_code == OK and answer.statuses[1].limit_remaining == 2
        assert not answer.statuses[0].HasField("current_limit")

    run(scenario)


def test_descriptor_limit_override(run: Run) -> None:
    """README (rate limit override): the descriptor's own limit replaces the configured one."""

    async def scenario(s: Service) -> None:
        limit = {"requests_per_unit": 2, "unit": MINUTE}
        answers = [await s.ask([("foo", "bar")], limit=limit) for _ in range(3)]
        assert [a.overall_code for a in answers] == [OK, OK, OVER]
        assert answers[0].statuses[0].current_limit.requests_per_unit == 2

    run(scenario)


def test_depth_must_match_the_config(run: Run) -> None:
    """README: a descriptor deeper or shallower than the config's path matches no limit."""

    async def scenario(s: Service) -> None:
        shallow = await s.ask([("nested", "a")])
        deep = await s.ask([("nested", "a"), ("leaf", "b"), ("more", "c")])
        exact = await s.ask([("nested", "a"), ("leaf", "b")])
        assert not shallow.statuses[0].HasField("current_limit") and not deep.statuses[0].HasField(
            "current_limit"
        )
        assert exact.statuses[0].current_limit.requests_per_unit == 3

    run(scenario)


def test_detailed_metric_and_near_limit(run: Run) -> None:
    """README (detailed_metric): the counters are labelled with the descriptor's values.
    base_limiter_test.go: hits past 80 % of the limit count as near_limit."""

    async def scenario(s: Service) -> None:
        await s.ask([("detailed", "v1")], hits=85)

        def sample(name: str, key: str) -> float:
            return (
                s.registry.get_sample_value(f"meshgate_ratelimit_{name}_total", {"domain": "up", "key": key})
                or 0
            )

        assert sample("total_hits", "up.detailed_v1") == 85
        await s.ask([("foo", "bar")], hits=9)
        assert sample("near_limit", "up.foo_bar") == 9 - 8  # the hits above 8 of 10

    run(scenario)


@pytest.mark.parametrize("key", ["quota_mode", "metadata"])
def test_quota_mode_and_response_metadata_are_refused_by_name(tmp_path: Path, key: str) -> None:
    """TestServiceGlobalQuotaMode, TestServicePerDescriptorQuotaMode, TestMetadataReturnedForPassed
    Descriptors: not implemented by meshgate; a config that uses them is refused with the field named
    instead of being half-applied (docs/ratelimit.md)."""
    value = "true" if key == "quota_mode" else "{name: x}"
    (tmp_path / "q.yaml").write_text(
        f"domain: q\ndescriptors:\n  - {{key: a, {key}: {value}, rate_limit: {{unit: minute, requests_per_unit: 1}}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config_dir(tmp_path)
    assert key in str(caught.value)
