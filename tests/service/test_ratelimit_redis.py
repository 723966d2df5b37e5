"""Redis-only properties: one round trip per request (Redis's own INFO commandstats), the key layout
with tenant hash tags, and a stopped server -> StoreUnavailable within the timeout, then recovery.
The same against a real Sentinel (master found through it) and a real 3-master Cluster (one script per
request per hash-tag slot; all-or-nothing within a tenant)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from meshgate.policy import parse_policy
from meshgate.ratelimit import Decision, Descriptor, Limiter, Request, Settings, StoreUnavailable
from meshgate.ratelimit.compile import compile_policy
from meshgate.ratelimit.model import RateLimitConfig
from meshgate.ratelimit.redis_store import RedisStore, redact
from meshgate.ratelimit.store import Slot, StoreResult
from tests.harness.procs import eventually
from tests.harness.redis import RedisServer
from tests.service._redis_topologies import ClusterTopology, SentinelTopology, flush

POLICY = """
tiers: [{name: gold, multiplier: 10}]
tenants:
  - {name: acme, tier: gold, quotas: [user-rpm, tenant-rpm]}
  - {name: globex, quotas: [user-rpm, tenant-rpm]}
quotas:
  - {name: user-rpm, per: [tenant, user], limit: 5, window: minute}
  - {name: tenant-rpm, per: tenant, limit: 100, window: minute}
"""


def config() -> RateLimitConfig:
    domain, tree = compile_policy(parse_policy(POLICY))
    return RateLimitConfig({domain: tree})


def limiter_for(url: str) -> Limiter:
    return Limiter(RedisStore(url, timeout=0.05), config=config())


def request(tenant: str, user: str) -> Request:
    return Request("meshgate", (
        Descriptor((("quota", "user-rpm"), ("tenant", tenant), ("user", user))),
        Descriptor((("quota", "tenant-rpm"), ("tenant", tenant))),
    ))


def script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("eval", "evalsha"))


# commands a client sends to open a connection, and the ones the script runs inside Redis
_NOT_ROUND_TRIPS = {
    "info", "config|resetstat", "config", "hello", "client", "client|setinfo", "mget", "incrby", "expire",
    "time",
}


def other_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    names = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    return {k: v for k, v in names.items() if k not in _NOT_ROUND_TRIPS | {"eval", "evalsha"}}


def test_one_round_trip_per_request_and_key_layout(redis_server: RedisServer) -> None:
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    client.config_resetstat()

    async def main() -> list[bool]:
        limiter = limiter_for(redis_server.url)
        try:
            return [(await limiter.decide(request("globex", "bob"))).over_limit for _ in range(7)]
        finally:
            await limiter.store.close()

    assert asyncio.run(main()) == [False] * 5 + [True] * 2
    # 5 admitted + 1 refused by Redis; the 7th is refused by the local cache without any call
    assert script_calls(client) == 6
    assert other_calls(client) == {}  # no client-side MGET, INCRBY or SCRIPT LOAD: only the script
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in client.keys("*"))
    assert len(keys) == 2
    assert keys[0].startswith("mg:{globex}:meshgate:quota=tenant-rpm:tenant=globex:60:")
    assert keys[1].startswith("mg:{globex}:meshgate:quota=user-rpm:tenant=globex:user=bob:60:")
    assert 0 < client.ttl(keys[0]) <= 61


def test_a_refused_request_leaves_no_counter_behind(redis_server: RedisServer) -> None:
    """All or nothing in Redis: a request refused by one descriptor leaves no counter it would have
    created, and the others where they were."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port)

    async def main() -> list[bool]:
        limiter = Limiter(
            RedisStore(redis_server.url, timeout=1.0), config=config(), settings=Settings(local_cache=False)
        )
        try:
            # globex's tenant counter: 100 a minute; exhaust it through 20 users (5 each)
            for n in range(20):
                for _ in range(5):
                    assert not (await limiter.decide(request("globex", f"u{n}"))).over_limit
            return [(await limiter.decide(request("globex", user))).over_limit for user in ("u0", "new")]
        finally:
            await limiter.store.close()

    assert asyncio.run(main()) == [True, True]
    keys = {k.decode() for k in client.keys("*")}
    assert not any("user=new" in k for k in keys)  # refused by the tenant: never created
    user0 = next(k for k in keys if "user=u0:" in k)
    tenant = next(k for k in keys if "quota=tenant-rpm" in k)
    assert (int(client.get(user0)), int(client.get(tenant))) == (5, 100)  # nothing added
    assert 0 < client.ttl(user0) <= 61


def test_counters_expire_with_their_window_and_a_sliding_one_a_window_later(redis_server: RedisServer) -> None:
    """The script gives a new counter its TTL (sent as seconds on meshgate's clock): a fixed window's
    until the window ends, a sliding window's one window more (the next window still counts it)."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    policy = POLICY.replace("window: minute}", "window: minute, algorithm: sliding_window}", 1)
    domain, tree = compile_policy(parse_policy(policy))
    now = 1_700_000_040 + 15  # 15 s into a minute (1_700_000_040 is one)
    limiter = Limiter(RedisStore(redis_server.url, timeout=1.0), config=RateLimitConfig({domain: tree}),
                      clock=lambda: now)

    async def main() -> None:
        try:
            assert not (await limiter.decide(request("globex", "ttl"))).over_limit
        finally:
            await limiter.store.close()

    asyncio.run(main())
    start = now - 15  # the counters of this window (no other test runs in 2023)
    sliding = f"mg:{{globex}}:meshgate:quota=user-rpm:tenant=globex:user=ttl:60:{start}"
    fixed = f"mg:{{globex}}:meshgate:quota=tenant-rpm:tenant=globex:60:{start}"
    # Redis's clock is not the test's: the TTLs are what meshgate sent, less the time since
    assert 100 <= client.ttl(sliding) <= 106  # 45 s to the window's end, + 60, + 1
    assert 40 <= client.ttl(fixed) <= 46  # 45 s to the window's end, + 1


def test_a_flushed_script_cache_costs_one_eval_then_the_kept_command_again(redis_server: RedisServer) -> None:
    """The same Request object (as the service hands it in) reuses its packed EVALSHA; after SCRIPT
    FLUSH the first call gets NOSCRIPT, runs EVAL once, and the counting goes on where it was."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port)

    async def main() -> list[int]:
        limiter = limiter_for(redis_server.url)
        repeated = request("globex", "ann")
        remaining = []
        try:
            for flush_before in (False, False, True, False):
                if flush_before:
                    client.script_flush()
                    client.config_resetstat()
                remaining.append((await limiter.decide(repeated)).statuses[0].remaining)
        finally:
            await limiter.store.close()
        return remaining

    assert asyncio.run(main()) == [4, 3, 2, 1]
    stats = client.info("commandstats")
    assert stats["cmdstat_eval"]["calls"] == 1
    assert stats["cmdstat_evalsha"]["calls"] >= 1  # the one after the flush (and the NOSCRIPT, if counted)


def test_tier_multiplier_applies_per_tenant(redis_server: RedisServer) -> None:
    async def main() -> tuple[int | None, int | None]:
        limiter = limiter_for(redis_server.url)
        try:
            gold = await limiter.decide(request("acme", "ann"))
            free = await limiter.decide(request("globex", "ann"))
            return gold.statuses[0].limit, free.statuses[0].limit
        finally:
            await limiter.store.close()

    assert asyncio.run(main()) == (50, 5)


def test_stopped_redis_is_unavailable_within_the_timeout_then_recovers(redis_server: RedisServer) -> None:
    async def main() -> None:
        limiter = limiter_for(redis_server.url)
        try:
            assert not (await limiter.decide(request("globex", "cy"))).over_limit
            redis_server.stop()
            for _ in range(3):
                started = time.monotonic()
                try:
                    await limiter.decide(request("globex", "cy"))
                except StoreUnavailable:
                    pass
                else:
                    raise AssertionError("expected StoreUnavailable")
                assert time.monotonic() - started < 1.0  # bounded by the 50 ms timeout (loose: shared CI)
            redis_server.start()
            decision = await limiter.decide(request("globex", "cy"))
            assert not decision.over_limit  # a fresh server: counters restart
        finally:
            await limiter.store.close()

    asyncio.run(main())


def test_password_is_redacted() -> None:
    assert redact("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert "s3cret" not in repr(RedisStore("redis://u:s3cret@127.0.0.1:1/0"))
    # redis-py also reads a password from the query: hidden there too, the rest of the URL kept
    assert redact("redis://host:6379/0?db=2&password=s3cret") == "redis://host:6379/0?db=2&password=***"
    assert redact("unix:///run/redis.sock?Password=s3cret#x") == "unix:///run/redis.sock?Password=***#x"
    assert redact("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock?db=1"
    assert "s3cret" not in repr(RedisStore("redis://127.0.0.1:1/0?password=s3cret"))


def test_urls_pick_single_sentinel_or_cluster() -> None:
    async def main() -> None:
        single = RedisStore("redis://127.0.0.1:1/3")
        sentinel = RedisStore("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/mymaster/2")
        cluster = RedisStore("redis+cluster://127.0.0.1:7000")
        try:
            assert not single.cluster and not sentinel.cluster and cluster.cluster
            assert isinstance(cluster._client, RedisCluster)
            pool = sentinel._client.connection_pool
            assert pool.service_name == "mymaster"
            assert [c.connection_pool.connection_kwargs["port"] for c in pool.sentinel_manager.sentinels] == [
                26379, 26380]
            assert "pw" not in repr(sentinel)
            with pytest.raises(ValueError, match="names the service"):
                RedisStore("redis+sentinel://10.0.0.1:26379")
        finally:
            for store in (single, sentinel, cluster):
                await store.close()

    asyncio.run(main())


def test_cluster_runs_one_script_per_tag() -> None:
    calls: list[list[str]] = []

    async def fake_apply(slots: Sequence[Slot], now: float) -> StoreResult:
        calls.append([s.key for s in slots])
        return StoreResult(slots[0].tag != "b", tuple(len(s.key) for s in slots))

    async def main() -> StoreResult:
        store = RedisStore("redis+cluster://127.0.0.1:7000")
        store._apply_client = fake_apply  # type: ignore[method-assign]
        try:
            slots = [Slot(k, k, 1, 1, 1, 0, True, True, k[0]) for k in ("a1", "b22", "a333")]
            return await store.apply(slots, 0.0)
        finally:
            await store.close()

    result = asyncio.run(main())
    assert calls == [["a1", "a333"], ["b22"]]
    assert (result.admitted, list(result.used)) == (False, [2, 3, 4])


def test_database_from_the_url(redis_server: RedisServer) -> None:
    async def main() -> None:
        limiter = Limiter(RedisStore(f"redis://{redis_server.host}:{redis_server.port}/3", timeout=1.0),
                          config=config())
        try:
            await limiter.decide(request("globex", "db"))
        finally:
            await limiter.store.close()

    asyncio.run(main())
    assert redis.Redis(host=redis_server.host, port=redis_server.port, db=3).dbsize() == 2
    assert redis.Redis(host=redis_server.host, port=redis_server.port, db=0).dbsize() == 0


def test_late_replies_after_a_timeout_do_not_shift_the_answers(redis_server: RedisServer) -> None:
    """A paused server times the call out; its reply arrives later and must not answer the next call,
    and its script, run once Redis resumes, past its deadline, charges nothing. Until that late reply
    is in, the connection takes no new call (UNAVAILABLE at once, nothing written)."""

    async def main() -> None:
        limiter = limiter_for(redis_server.url)
        store = limiter.store
        assert isinstance(store, RedisStore) and store._resp is not None
        try:
            assert (await limiter.decide(request("globex", "late"))).statuses[0].remaining == 4
            pid = redis_server.proc.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(StoreUnavailable):
                    await limiter.decide(request("globex", "late"))
                assert store._resp.stalled
                with pytest.raises(StoreUnavailable, match="not answering"):
                    await limiter.decide(request("globex", "late"))
            finally:
                os.kill(pid, signal.SIGCONT)
            await eventually(lambda: not store._resp.stalled)  # the late reply is in
            answers = [(await limiter.decide(request("globex", "late"))).statuses[0].remaining for _ in range(2)]
            assert answers == [3, 2]  # the refused calls counted nothing
        finally:
            await store.close()

    asyncio.run(main())


def test_a_script_run_past_its_deadline_charges_nothing_and_the_clock_offset_is_learnt(
    redis_server: RedisServer,
) -> None:
    """The script compares its call's deadline with Redis's TIME. Told Redis's clock runs an hour
    behind, the store sends a deadline Redis has passed: the script charges nothing and the call is
    UNAVAILABLE; its reply carries Redis's time, so the next call's deadline is right again."""

    async def main() -> list[int]:
        limiter = limiter_for(redis_server.url)
        store = limiter.store
        assert isinstance(store, RedisStore)
        try:
            first = (await limiter.decide(request("globex", "clock"))).statuses[0].remaining
            store._offset -= 3600
            with pytest.raises(StoreUnavailable, match="past its call's deadline"):
                await limiter.decide(request("globex", "clock"))
            after = (await limiter.decide(request("globex", "clock"))).statuses[0].remaining
            return [first, after]
        finally:
            await store.close()

    assert asyncio.run(main()) == [4, 3]  # the refused call counted nothing


def test_a_late_reply_of_a_script_that_charged_is_taken_back(redis_server: RedisServer) -> None:
    """Redis ran the script in time but its reply came after the call had been answered UNAVAILABLE
    (here: the connection's deadline is now, Redis's a minute away): the late reply is read and the
    hits it added taken back, ahead of the next call on the connection."""

    async def main() -> list[int]:
        limiter = limiter_for(redis_server.url)
        store = limiter.store
        assert isinstance(store, RedisStore) and store._resp is not None
        try:
            before = [s.remaining for s in (await limiter.decide(request("globex", "race"))).statuses]
            prepared = next(iter(limiter._prepared.values()))
            loop = asyncio.get_running_loop()
            command = store._evalsha(prepared.slots, time.time(), int((time.time() + 60) * 1000))
            assert command is not None
            with pytest.raises(TimeoutError):
                await store._resp.send(command, loop.time(), prepared.slots)
            await eventually(lambda: store.taken_back == 1)
            after = [s.remaining for s in (await limiter.decide(request("globex", "race"))).statuses]
            return before + after
        finally:
            await store.close()

    assert asyncio.run(main()) == [4, 99, 3, 98]  # the call answered UNAVAILABLE left nothing behind


def test_a_call_its_client_cancelled_is_taken_back_too(redis_server: RedisServer) -> None:
    """Envoy gave up on the call (its timeout, shorter than ours) before Redis answered: the call got no
    answer, so what its script charged is taken back when the reply comes."""

    async def main() -> list[int]:
        limiter = limiter_for(redis_server.url)
        store = limiter.store
        assert isinstance(store, RedisStore) and store._resp is not None
        try:
            before = (await limiter.decide(request("globex", "gone"))).statuses[0].remaining
            resp, send = store._resp, store._resp.send

            def send_then_cancel(*args: Any, **kwargs: Any) -> asyncio.Future[Any]:
                future = send(*args, **kwargs)  # written at the end of this loop turn, then cancelled
                asyncio.get_running_loop().call_soon(call.cancel)
                return future

            resp.send = send_then_cancel  # type: ignore[method-assign]
            call = asyncio.create_task(limiter.decide(request("globex", "gone")))
            with pytest.raises(asyncio.CancelledError):
                await call
            resp.send = send  # type: ignore[method-assign]
            await eventually(lambda: store.taken_back == 1)
            after = (await limiter.decide(request("globex", "gone"))).statuses[0].remaining
            return [before, after]
        finally:
            await store.close()

    assert asyncio.run(main()) == [4, 3]


def test_error_reply_is_unavailable(redis_server: RedisServer) -> None:
    async def main() -> None:
        limiter = limiter_for(redis_server.url)
        try:
            await limiter.decide(request("globex", "typed"))
            client = redis.Redis(host=redis_server.host, port=redis_server.port)
            for key in client.keys("*user=typed*"):
                client.delete(key)
                client.rpush(key, "not a counter")
            with pytest.raises(StoreUnavailable, match="RespError"):
                await limiter.decide(request("globex", "typed"))
        finally:
            await limiter.store.close()

    asyncio.run(main())


# --- real Sentinel and Cluster (tests/service/conftest.py) ---------------------------------------------
def decide_all(url: str, requests: list[Request], *, policy: str = POLICY) -> list[Decision]:
    """Each request in turn through one fresh RedisStore on `url`."""

    async def main() -> list[Decision]:
        domain, tree = compile_policy(parse_policy(policy))
        limiter = Limiter(RedisStore(url, timeout=2.0), config=RateLimitConfig({domain: tree}))
        try:
            return [await limiter.decide(r) for r in requests]
        finally:
            await limiter.store.close()

    return asyncio.run(main())


def test_sentinel_finds_the_master_one_round_trip_per_request(redis_sentinel: SentinelTopology) -> None:
    flush(redis_sentinel)
    (master,) = redis_sentinel.masters()
    master.config_resetstat()
    decisions = decide_all(redis_sentinel.url, [request("globex", "sam") for _ in range(7)])
    assert [d.statuses[0].remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
    assert [d.over_limit for d in decisions] == [False] * 5 + [True] * 2
    assert script_calls(master) == 6  # the 7th: the local over-limit cache
    # the one Sentinel watches the master on its own: a PING every second, INFO every 10 s, a hello
    # PUBLISH every 2 s: fewer than one per request (a client command per request would make 7)
    others = other_calls(master)
    assert others.keys() <= {"ping", "info", "publish"} and all(n < 7 for n in others.values()), others
    assert master.keys("*") == master.keys("mg:{globex}:meshgate:*") and master.dbsize() == 2


CLUSTER_POLICY = POLICY + """
  - {name: model-rpm, per: model, limit: 1000, window: minute}
"""


def test_cluster_one_script_per_request_per_slot(redis_cluster: ClusterTopology) -> None:
    flush(redis_cluster)
    nodes = redis_cluster.masters()
    model = Descriptor((("quota", "model-rpm"), ("model", "m1")))  # no tenant: its own tag

    def one_tag(user: str) -> Request:
        return request("globex", user)

    def two_tags(user: str) -> Request:
        return Request("meshgate", (*one_tag(user).descriptors, model))

    decide_all(redis_cluster.url, [two_tags("warm")], policy=CLUSTER_POLICY)  # the script reaches both slots
    for node in nodes:
        node.config_resetstat()
    requests = [one_tag("u1"), one_tag("u2"), one_tag("u3"), two_tags("u4"), two_tags("u5")]
    decisions = decide_all(redis_cluster.url, requests, policy=CLUSTER_POLICY)
    assert [d.statuses[0].remaining for d in decisions] == [4] * 5
    assert [d.statuses[1].remaining for d in decisions] == [98, 97, 96, 95, 94]  # tenant-rpm of globex
    assert decisions[-1].statuses[2].remaining == 997  # model-rpm
    assert sum(script_calls(n) for n in nodes) == 3 + 2 * 2  # one script per request per slot
    others = [other_calls(n) for n in nodes]  # once per client: its discovery (CLUSTER SLOTS, COMMAND)
    assert all(calls.keys() <= {"cluster", "command"} and max(calls.values(), default=1) == 1 for calls in others)
    holding = [n for n in nodes if n.keys("mg:{globex}:*")]
    assert len(holding) == 1 and len(holding[0].keys("mg:{globex}:*")) == 7  # one tenant: one node


def test_cluster_all_or_nothing_within_a_tenant(redis_cluster: ClusterTopology) -> None:
    flush(redis_cluster)
    decisions = decide_all(redis_cluster.url, [request("acme", "dee")] * 51 + [request("acme", "eve")])
    tenant_remaining = [d.statuses[1].remaining for d in decisions]
    assert not any(d.over_limit for d in decisions[:50]) and decisions[50].over_limit  # gold: 50 per user
    assert tenant_remaining[49] == 950 and tenant_remaining[50] == 950  # refused: tenant-rpm not charged
    assert tenant_remaining[51] == 949


def test_a_cluster_no_node_of_which_answers_is_unavailable() -> None:
    """redis-py raises RedisClusterUnreachableError, which is no RedisError: it ended the health probe
    (ratelimit_store then said up for ever) and failed each call unwrapped. Now StoreUnavailable."""
    from tests.harness.procs import free_port

    async def main() -> None:
        store = RedisStore(f"redis+cluster://:s3cret@127.0.0.1:{free_port()}", timeout=0.2)
        try:
            with pytest.raises(StoreUnavailable, match="RedisClusterUnreachableError") as caught:
                await store.ping()
            assert "s3cret" not in str(caught.value)
            with pytest.raises(StoreUnavailable, match="RedisClusterUnreachableError"):
                await store.apply([Slot("k", "k", 10, 1, 60, 0, True, True)], time.time())
        finally:
            await store.close()

    asyncio.run(main())
