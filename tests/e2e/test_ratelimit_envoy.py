"""Through a real Envoy's ratelimit filter to real `meshgate serve` processes (and a real Redis).

The identity headers (x-meshgate-tenant / -user) are sent by the client here: extauthz sets them in
production. The quota is 60 per minute per user, so a window boundary during the burst is rare; when
one happens (X-RateLimit-Reset jumps up) the burst is retried with a fresh user.
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from tests.harness import bootstraps as b
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import Proc, free_port, http_get, wait_until
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack

POLICY: dict[str, Any] = {
    "gateway": {"ratelimit": {"domain": "meshgate", "response_headers": "x-ratelimit", "store_timeout": "50ms"}},
    "tiers": [{"name": "free", "multiplier": 1}, {"name": "gold", "multiplier": 2}],
    "tenants": [
        {"name": "globex", "tier": "free", "quotas": ["user-rpm"]},
        {"name": "acme", "tier": "gold", "quotas": ["user-rpm"]},
    ],
    "quotas": [{"name": "user-rpm", "per": ["tenant", "user"], "limit": 60, "window": "minute"}],
}
_RLS = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
_users = itertools.count(1)


class Upstream:
    """`python -m http.server` on a free port: any 200 will do behind the gateway."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "http.server", str(self.port), "--bind", self.host, "--directory", str(workdir)]
        self.proc = Proc("upstream", argv, log_dir=workdir)

    def start(self) -> Upstream:
        self.proc.start()
        wait_until(lambda: http_get(f"http://{self.host}:{self.port}/")[0] == 200, 20, what="upstream", proc=self.proc)
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        return self.proc.stop(timeout)


def gateway(upstream: Upstream, ratelimit_ports: list[int]) -> dict[str, Any]:
    """Listener `ingress`: the ratelimit filter (failure_mode_deny) with the descriptor the xds issue
    generates for a per-(tenant, user) quota, in front of the upstream."""
    route = b.route("/", "upstream")
    route["route"]["rate_limits"] = [{"actions": [
        {"generic_key": {"descriptor_key": "quota", "descriptor_value": "user-rpm"}},
        {"request_headers": {"header_name": "x-meshgate-tenant", "descriptor_key": "tenant"}},
        {"request_headers": {"header_name": "x-meshgate-user", "descriptor_key": "user"}},
    ]}]
    rls = {"name": "envoy.filters.http.ratelimit", "typed_config": {
        "@type": _RLS,
        "domain": "meshgate",
        "failure_mode_deny": True,
        "timeout": "1s",
        "rate_limit_service": {"transport_api_version": "V3", "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}},
    }}
    rls_cluster = b.static_cluster("rls", "127.0.0.1", ratelimit_ports[0], http2=True)
    rls_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ratelimit_ports
    ]
    clusters = [b.static_cluster("upstream", upstream.host, upstream.port), rls_cluster]
    return b.bootstrap([b.hcm_listener("ingress", [route], http_filters=[rls])], clusters)


@pytest.fixture
def upstream(harness: Stack) -> Upstream:
    return harness.add(Upstream(harness.workdir)).start()


def call(client: httpx.Client, tenant: str, user: str) -> httpx.Response:
    return client.get("/", headers={"x-meshgate-tenant": tenant, "x-meshgate-user": user})


def burst_until_refused(client: httpx.Client, tenant: str, limit: int) -> tuple[int, httpx.Response]:
    """Requests of one fresh user until the first 429, retried if a window boundary fell inside."""
    for _ in range(3):
        user = f"user-{next(_users)}"
        first = call(client, tenant, user)
        resets = [int(first.headers["x-ratelimit-reset"])]
        admitted = 1 if first.status_code == 200 else 0
        while True:
            response = call(client, tenant, user)
            resets.append(int(response.headers["x-ratelimit-reset"]))
            if response.status_code != 200 or admitted > limit:
                break
            admitted += 1
        if resets == sorted(resets, reverse=True):  # one window: the reset only went down
            return admitted, response
    raise AssertionError("three bursts in a row crossed a window boundary")


def test_61st_request_in_a_window_gets_429_with_headers(
    meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy], upstream: Upstream
) -> None:
    mg = meshgate_factory(POLICY)
    envoy = envoy_factory(gateway(upstream, [mg.ports["ratelimit"]]))
    with httpx.Client(base_url=f"http://127.0.0.1:{envoy.listener_port('ingress')}", trust_env=False) as client:
        admitted, refused = burst_until_refused(client, "globex", 60)
        assert admitted == 60
        assert refused.status_code == 429
        assert refused.headers["x-ratelimit-limit"] == "60"
        assert refused.headers["x-ratelimit-remaining"] == "0"
        assert 0 < int(refused.headers["x-ratelimit-reset"]) <= 60
        assert refused.headers["x-envoy-ratelimited"] == "true"
        ok = call(client, "globex", f"user-{next(_users)}")
        assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining"] == "59"

        # the gold tier's multiplier: 120 per minute
        gold = call(client, "acme", f"user-{next(_users)}")
        assert gold.status_code == 200 and gold.headers["x-ratelimit-limit"] == "120"
    assert envoy.stat("cluster.upstream.ratelimit.over_limit") >= 1


def test_two_meshgates_sharing_redis_enforce_one_global_limit(
    meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy], upstream: Upstream,
    redis_server: RedisServer,
) -> None:
    first = meshgate_factory(POLICY, redis_url=redis_server.url)
    # the second holds its Redis commands for 2 ms (store_pipeline_window): the same one limit
    windowed = copy.deepcopy(POLICY)
    windowed["gateway"]["ratelimit"]["store_pipeline_window"] = "2ms"
    second = meshgate_factory(windowed, redis_url=redis_server.url)
    envoy = envoy_factory(gateway(upstream, [first.ports["ratelimit"], second.ports["ratelimit"]]))
    with httpx.Client(base_url=f"http://127.0.0.1:{envoy.listener_port('ingress')}", trust_env=False) as client:
        admitted, refused = burst_until_refused(client, "globex", 60)
    assert (admitted, refused.status_code) == (60, 429)
    for mg in (first, second):  # both answered part of the burst
        assert _metric_sum(mg, "meshgate_ratelimit_total_hits_total") > 0


def _metric_sum(mg: Meshgate, name: str) -> float:
    status, body = http_get(mg.metrics_url)
    assert status == 200
    return sum(float(line.split()[-1]) for line in body.decode().splitlines() if line.startswith(name + "{"))


def _should_rate_limit(address: str, user: str) -> grpc.StatusCode:
    request = rls_pb2.RateLimitRequest(domain="meshgate")
    descriptor = request.descriptors.add()
    for key, value in (("quota", "user-rpm"), ("tenant", "globex"), ("user", user)):
        descriptor.entries.add(key=key, value=value)
    with grpc.insecure_channel(address) as channel:
        try:
            rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request, timeout=2.0)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_redis_stopped_mid_test_is_unavailable_then_recovers(
    meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy], upstream: Upstream,
    redis_server: RedisServer,
) -> None:
    mg = meshgate_factory(POLICY, redis_url=redis_server.url)
    address = mg.address("ratelimit")
    envoy = envoy_factory(gateway(upstream, [mg.ports["ratelimit"]]))
    with httpx.Client(base_url=f"http://127.0.0.1:{envoy.listener_port('ingress')}", trust_env=False) as client:
        assert call(client, "globex", "redis-user").status_code == 200
        redis_server.stop()
        # answered well within the 2 s deadline: UNAVAILABLE, never DEADLINE_EXCEEDED
        assert _should_rate_limit(address, "redis-user") == grpc.StatusCode.UNAVAILABLE
        assert call(client, "globex", "redis-user").status_code == 500  # failure_mode_deny
        redis_server.start()
        wait_until(lambda: _should_rate_limit(address, "redis-user") == grpc.StatusCode.OK, 20,
                   what="ratelimit answers again once redis is back", proc=mg.proc)
        assert call(client, "globex", "redis-user").status_code == 200
