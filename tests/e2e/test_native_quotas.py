"""Native quotas (docs/native.md, "Quotas"): Envoy's own local rate limit, no meshgate call per request,
each limit shared among the gateways connected to `meshgate serve`.

Envoy 1.40 gateways from `meshgate envoy-bootstrap`, configured over ADS with `gateway.enforcement:
auto`; API keys (extauthz sets the identity headers, the native filters come after it) in front of the
chat stand-in of examples/quickstart_models.py. The quota is per user per day, so no bucket refills
measurably during a test (limit / 86400 tokens a second).

Two gateways listen on the same port (Envoy sets SO_REUSEPORT): the kernel gives each new connection to
one of them, and a keep-alive client stays on its gateway. `pinned()` opens clients until it has one per
gateway, telling them apart by the gateways' request counters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from meshgate.xds.bootstrap import envoy_bootstrap
from tests.e2e.test_llm_usage import ChatStandIn
from tests.e2e.test_ratelimit_envoy import Upstream
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import free_port, wait_until
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack

MODEL = "zen-chat"
BASE = 2  # the quota's limit; acme's tier doubles it
LIMIT = 4  # what acme's users get: contract.tier_limit(2, 2.0)
USERS = ("alice", "bob", "carol", "dave")
GATEWAYS = "meshgate|gateways"
_ADMITTED = "meshgate_quota_per-user.http_local_rate_limit.ok"
_REFUSED = "meshgate_quota_per-user.http_local_rate_limit.rate_limited"


def key(user: str) -> str:
    return f"sk-{user}-0123456789abcdef"


def policy(port: int, backend: ChatStandIn, upstream: Upstream) -> dict[str, Any]:
    """acme's users: `per-user` (fixed window: native); globex's: `per-user-sliding` (sliding window: on
    meshgate ratelimit in `auto`), the same limit, on the same routes: an OpenAI model, and a KServe v2
    model routed by path (`python -m http.server` behind it: any answer but a 429 will do)."""
    keys = [{"id": u, "tenant": "acme", "roles": ["invoker"], "sha256": hashlib.sha256(key(u).encode()).hexdigest()}
            for u in USERS]  # fmt: skip
    keys.append({"id": "gina", "tenant": "globex", "roles": ["invoker"],
                 "sha256": hashlib.sha256(key("gina").encode()).hexdigest()})  # fmt: skip
    return {
        "version": 1,
        "gateway": {"port": port, "address": "127.0.0.1", "enforcement": "auto",
                    "ratelimit": {"response_headers": "x-ratelimit"}},
        "api_keys": keys,
        "tiers": [{"name": "gold", "multiplier": 2}],
        "tenants": [{"name": "acme", "tier": "gold", "quotas": ["per-user"]},
                    {"name": "globex", "tier": "gold", "quotas": ["per-user-sliding"]}],
        "roles": [{"name": "invoker", "models": ["*"]}],
        "models": [{"name": MODEL, "protocol": "openai", "versions": [
                        {"name": "v1", "endpoints": [f"{backend.host}:{backend.port}"]}]},
                   {"name": "iris", "health_check": {"enabled": False}, "versions": [
                        {"name": "v1", "endpoints": [f"{upstream.host}:{upstream.port}"]}]}],
        "quotas": [
            {"name": "per-user", "per": ["tenant", "user"], "limit": BASE, "window": "day"},
            {"name": "per-user-sliding", "per": ["tenant", "user"], "limit": BASE, "window": "day",
             "algorithm": "sliding_window"},
        ],
    }  # fmt: skip


def ask(client: httpx.Client, user: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Now is better."}], "max_tokens": 1}
    return client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key(user)}"})


def admitted_until_refused(client: httpx.Client, user: str, most: int) -> tuple[int, httpx.Response]:
    """Requests of `user` until the first refusal (at most `most`): how many were admitted, and the last."""
    for admitted in range(most):
        response = ask(client, user)
        if response.status_code != 200:
            return admitted, response
    raise AssertionError(f"{user}: {most} requests admitted, none refused")


def members(envoy: Envoy) -> int:
    """Hosts of the gateways' local cluster, as this Envoy sees them."""
    for cluster in envoy.clusters().get("cluster_statuses", []):
        if cluster["name"] == GATEWAYS:
            return len(cluster.get("host_statuses", []))
    return 0


def sees(envoys: list[Envoy], count: int) -> None:
    for envoy in envoys:
        wait_until(lambda e=envoy: members(e) == count, 15, what=f"{envoy} sees {count} gateway(s)", proc=envoy.proc)


def served(envoy: Envoy) -> int:
    return int(envoy.stat("http.gateway.downstream_rq_completed"))


@pytest.fixture
def backends(harness: Stack) -> tuple[ChatStandIn, Upstream]:
    return harness.add(ChatStandIn(harness.workdir)).start(), harness.add(Upstream(harness.workdir)).start()


@pytest.fixture
def stack(
    backends: tuple[ChatStandIn, Upstream], meshgate_factory: Callable[..., Meshgate]
) -> Iterator[tuple[Meshgate, int]]:
    port = free_port()
    yield meshgate_factory(policy(port, *backends)), port


def gateway(envoy_factory: Callable[..., Envoy], mg: Meshgate, node: str) -> Envoy:
    return envoy_factory(envoy_bootstrap(node, xds=mg.address("xds")), name=node)


def pinned(port: int, envoys: list[Envoy], opened: list[httpx.Client]) -> list[httpx.Client]:
    """One keep-alive client per gateway of `envoys` (in that order)."""
    found: dict[int, httpx.Client] = {}
    for _ in range(64):  # each new connection goes to either gateway: all found within 64 but at 2^-63
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=20)
        opened.append(client)
        before = [served(e) for e in envoys]
        total = sum(before)
        assert client.get("/v1/models", headers={"authorization": f"Bearer {key('dave')}"}).status_code == 200
        wait_until(lambda t=total: sum(served(e) for e in envoys) > t, 10, what="the request counted")
        [index] = [i for i, e in enumerate(envoys) if served(e) > before[i]]
        found.setdefault(index, client)
        if len(found) == len(envoys):
            return [found[i] for i in range(len(envoys))]
    raise AssertionError("64 connections all went to the same gateway")


def test_a_native_quota_refuses_request_l_plus_1_like_meshgate_ratelimit(
    stack: tuple[Meshgate, int], envoy_factory: Callable[..., Envoy]
) -> None:
    mg, port = stack
    envoy = gateway(envoy_factory, mg, "gw-a")
    sees([envoy], 1)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=20) as client:
        admitted, native = admitted_until_refused(client, "alice", LIMIT + 2)
        assert (admitted, native.status_code) == (LIMIT, 429)  # the tier's multiplier applied
        assert envoy.stat(_REFUSED) == 1 and envoy.stat(_ADMITTED) >= LIMIT  # Envoy refused it itself
        admitted, remote = admitted_until_refused(client, "gina", LIMIT + 2)  # meshgate ratelimit's quota
        assert (admitted, remote.status_code) == (LIMIT, 429)
    assert envoy.stat(_REFUSED) == 1  # (that one was not the local filter's)

    # the same to a client: status, OpenAI's error, the headers a client acts on
    for response in (native, remote):
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-envoy-ratelimited"] == "true"
        assert response.headers["x-ratelimit-remaining"] == "0"
        assert response.headers["retry-after"] == response.headers["x-ratelimit-reset"]
        assert 0 < int(response.headers["retry-after"]) <= 86400
    error, remote_error = native.json()["error"], remote.json()["error"]
    assert {k: error[k] for k in ("type", "code", "param")} == {
        k: remote_error[k] for k in ("type", "code", "param")
    } == {"type": "rate_limit_error", "code": "rate_limit_exceeded", "param": None}
    assert (error["quota"], remote_error["quota"]) == ("per-user", "per-user-sliding")
    for response, err in ((native, error), (remote, remote_error)):
        assert err["message"] == (
            f"Rate limit reached for quota {err['quota']}; retry after {response.headers['retry-after']} s"
        )
    # what differs (docs/native.md): no limit nor policy header (the limit depends on the tenant's tier)
    assert native.headers["x-meshgate-quota"] == "per-user"
    assert "x-ratelimit-limit" not in native.headers and "x-ratelimit-limit" in remote.headers

    # a KServe model's route: both quotas count every model; both 429s without a body
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=20) as client:
        refusals = [client.get("/v2/models/iris", headers={"x-api-key": key(u)}) for u in ("alice", "gina")]
    for response in refusals:
        assert (response.status_code, response.content) == (429, b"")
        assert response.headers["x-envoy-ratelimited"] == "true"
        assert response.headers["x-ratelimit-remaining"] == "0" and "retry-after" not in response.headers
    assert refusals[0].headers.get("content-type") == refusals[1].headers.get("content-type")
    assert envoy.stat(_REFUSED) == 2


def test_two_gateways_share_each_limit_and_one_leaving_gives_the_other_all(
    stack: tuple[Meshgate, int], envoy_factory: Callable[..., Envoy]
) -> None:
    mg, port = stack
    first, second = gateway(envoy_factory, mg, "gw-a"), gateway(envoy_factory, mg, "gw-b")
    sees([first, second], 2)
    opened: list[httpx.Client] = []
    try:
        clients = pinned(port, [first, second], opened)
        # each gateway's share is LIMIT / 2; bob's requests over both together stay within LIMIT
        results = [admitted_until_refused(c, "bob", LIMIT + 2) for c in clients]
        assert [(n, r.status_code) for n, r in results] == [(LIMIT // 2, 429)] * 2
        assert sum(n for n, _ in results) == LIMIT
        assert [e.stat(_REFUSED) for e in (first, second)] == [1, 1]

        second.stop()
        sees([first], 1)  # meshgate saw its stream end: the first gateway's share is the whole limit
        admitted, refused = admitted_until_refused(clients[0], "carol", LIMIT + 2)
        assert (admitted, refused.status_code) == (LIMIT, 429)
        # bob spent his whole share on this gateway (2 of 2 requests = LIMIT tokens at 2 a request)
        assert ask(clients[0], "bob").status_code == 429
    finally:
        for client in opened:
            client.close()


def test_gateways_of_two_meshgate_replicas_share_each_limit_through_redis(
    backends: tuple[ChatStandIn, Upstream], meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy], redis_server: RedisServer,
) -> None:  # fmt: skip
    """Each replica serves one gateway; both count two (meshgate/xds/_shared_gateways.py)."""
    port = free_port()
    doc = policy(port, *backends)
    replicas = [meshgate_factory(doc, redis_url=redis_server.url) for _ in range(2)]
    first, second = (gateway(envoy_factory, mg, f"gw-{i}") for i, mg in enumerate(replicas))
    sees([first, second], 2)
    opened: list[httpx.Client] = []
    try:
        clients = pinned(port, [first, second], opened)
        results = [admitted_until_refused(c, "bob", LIMIT + 2) for c in clients]
        assert [(n, r.status_code) for n, r in results] == [(LIMIT // 2, 429)] * 2
    finally:
        for client in opened:
            client.close()
