"""Endpoint health as a compile input: EDS health_status, failover to the other versions at priority 1,
only the assignments rebuilt; and the XdsService fed by a fake Readiness (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from envoy.config.core.v3 import health_check_pb2
from envoy.config.route.v3 import route_components_pb2 as rc

from meshgate.models import ChangeCallback, EndpointHealth, EndpointKey, EndpointState
from meshgate.policy import Policy
from meshgate.xds import XdsService, compile_snapshot, update_health
from meshgate.xds._route_tree import flat_routes
from meshgate.xds._types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshgate.xds.snapshot import Snapshot
from tests.unit.test_xds_support import model, policy

H, U, K = EndpointHealth.HEALTHY, EndpointHealth.UNHEALTHY, EndpointHealth.UNKNOWN


def two_endpoints(name: str = "m") -> dict[str, object]:
    """v1 (90) on two endpoints, v2 (10) on one, v3 shadow on one."""
    return {
        "name": name,
        "versions": [
            {"name": "v1", "weight": 90, "endpoints": ["10.0.0.1:80", "10.0.0.2:80"]},
            {"name": "v2", "weight": 10, "endpoints": ["10.0.0.3:80"]},
            {"name": "v3", "weight": 0, "endpoints": ["10.0.0.4:80"]},
        ],
        "ab": [{"header": "x-exp", "value": "b", "version": "v2"}],
        "shadow": {"version": "v3", "percent": 5},
    }


def key(version: str, endpoint: str, model_name: str = "m") -> EndpointKey:
    return EndpointKey(model_name, version, endpoint)


def priorities(snapshot: Snapshot, cluster: str) -> dict[int, list[tuple[str, int, int]]]:
    """priority -> [(address:port, health_status, load_balancing_weight)] of a cluster's assignment."""
    assignment = snapshot[ENDPOINT][cluster].message
    out: dict[int, list[tuple[str, int, int]]] = {}
    for locality in assignment.endpoints:
        out[locality.priority] = [
            (
                f"{e.endpoint.address.socket_address.address}:{e.endpoint.address.socket_address.port_value}",
                e.health_status,
                e.load_balancing_weight.value,
            )
            for e in locality.lb_endpoints
        ]
    return out


def statuses(snapshot: Snapshot, cluster: str) -> list[int]:
    return [status for _, status, _ in priorities(snapshot, cluster)[0]]


def canary(snapshot: Snapshot) -> rc.Route:
    config = snapshot[ROUTE]["meshgate_routes"].message
    return next(r for r in flat_routes(config.virtual_hosts[0]) if r.name == "m|canary")


HEALTHY_, UNHEALTHY_, UNKNOWN_ = (
    health_check_pb2.HEALTHY,
    health_check_pb2.UNHEALTHY,
    health_check_pb2.UNKNOWN,
)


def test_eds_endpoints_carry_the_health_missing_is_unknown() -> None:
    p = policy(two_endpoints())
    snapshot = compile_snapshot(p, health={key("v1", "10.0.0.1:80"): H, key("v1", "10.0.0.2:80"): U})
    assert statuses(snapshot, "model|m|v1") == [HEALTHY_, UNHEALTHY_]
    assert statuses(snapshot, "model|m|v2") == [UNKNOWN_]


def test_no_health_is_all_unknown() -> None:
    p = policy(two_endpoints())
    assert compile_snapshot(p).version == compile_snapshot(p, health={}).version
    unknown = {key("v1", "10.0.0.1:80"): K}
    assert compile_snapshot(p, health=unknown).version == compile_snapshot(p).version


def test_each_weighted_version_fails_over_to_the_other_weighted_versions() -> None:
    p = policy(two_endpoints())
    health = {key("v1", "10.0.0.1:80"): U}
    snapshot = compile_snapshot(p, health=health)
    # v2: its endpoint at priority 0, v1's two endpoints (with their health) at priority 1
    assert priorities(snapshot, "model|m|v2") == {
        0: [("10.0.0.3:80", UNKNOWN_, 0)],
        1: [("10.0.0.1:80", UNHEALTHY_, 0), ("10.0.0.2:80", UNKNOWN_, 0)],
    }
    assert priorities(snapshot, "model|m|v1")[1] == [("10.0.0.3:80", UNKNOWN_, 0)]
    # the shadow version fails over to nothing: mirrored traffic never reaches the primaries
    assert list(priorities(snapshot, "model|m|v3")) == [0]


def test_one_healthy_endpoint_keeps_all_traffic_at_priority_0() -> None:
    """Envoy's priority health is min(100, factor * healthy / total): 100 x the endpoints means one
    healthy endpoint of N still counts as 100 % (no spill, no panic mode over unhealthy endpoints)."""
    snapshot = compile_snapshot(policy(two_endpoints()))
    v1 = snapshot[ENDPOINT]["model|m|v1"].message
    assert v1.policy.overprovisioning_factor.value == 200
    assert snapshot[ENDPOINT]["model|m|v2"].message.policy.overprovisioning_factor.value == 100


def test_routes_do_not_depend_on_health_and_retries_move_to_another_priority() -> None:
    p = policy(two_endpoints())
    down = {key("v1", "10.0.0.1:80"): U, key("v1", "10.0.0.2:80"): U, key("v2", "10.0.0.3:80"): U}
    healthy, all_down = compile_snapshot(p), compile_snapshot(p, health=down)
    assert all_down.versions[ROUTE] == healthy.versions[ROUTE]
    assert all_down.versions[CLUSTER] == healthy.versions[CLUSTER]
    retry = canary(healthy).route.retry_policy
    assert retry.retry_priority.name == "envoy.retry_priorities.previous_priorities"
    assert [h.name for h in retry.retry_host_predicate] == ["envoy.retry_host_predicates.previous_hosts"]
    # all versions down: every endpoint UNHEALTHY; Envoy's panic mode then tries them anyway
    assert statuses(all_down, "model|m|v1") == [UNHEALTHY_] * 2
    assert priorities(all_down, "model|m|v2")[1] == [
        ("10.0.0.1:80", UNHEALTHY_, 0),
        ("10.0.0.2:80", UNHEALTHY_, 0),
    ]


def test_no_retries_no_retry_policy() -> None:
    snapshot = compile_snapshot(policy({**two_endpoints(), "retries": {"attempts": 0}}))
    assert not canary(snapshot).route.HasField("retry_policy")


def test_weight_zero_ab_version_fails_over_to_the_weighted_versions() -> None:
    m = model("n", {"a": 100, "b": 0}, ab=[{"header": "x-exp", "value": "b", "version": "b"}])
    snapshot = compile_snapshot(policy(m))
    assert priorities(snapshot, "model|n|b")[1] == [("127.0.0.1:9000", UNKNOWN_, 0)]
    assert list(priorities(snapshot, "model|n|a")) == [0]  # nothing to fail over to


def test_a_retry_moves_priority_only_where_a_cluster_has_a_priority_1() -> None:
    """previous_priorities on a route to a cluster with nothing at priority 1 would only cost Envoy
    (~2,000 instructions a request, docs/native.md): a route gets it iff its cluster fails over."""
    m = model("n", {"a": 100, "b": 0}, ab=[{"header": "x-exp", "value": "b", "version": "b"}])
    snapshot = compile_snapshot(policy(m, two_endpoints(), model("solo", {"v1": 100}, port=9500)))
    routes = {
        r.name: r.route for r in flat_routes(snapshot[ROUTE]["meshgate_routes"].message.virtual_hosts[0])
    }

    def moves(name: str) -> bool:
        policy_ = routes[name].retry_policy
        assert policy_.retry_host_predicate, name  # another endpoint, always
        return bool(policy_.retry_priority.name)

    for name, cluster in (("n|canary", "model|n|a"), ("n|ab|x-exp=b", "model|n|b"), ("n|pin|a", "model|n|a"),
                          ("n|pin|b", "model|n|b"), ("m|canary", ""), ("m|pin|v3", "model|m|v3"),
                          ("m|pin|v1", "model|m|v1"), ("solo|canary", "model|solo|v1")):  # fmt: skip
        has_priority_1 = not cluster or len(priorities(snapshot, cluster)) > 1
        assert moves(name) == has_priority_1, name
    assert not moves("solo|canary") and moves("n|ab|x-exp=b") and moves("m|canary")


def test_dns_clusters_fail_over_without_health() -> None:
    kserve = {
        "name": "k",
        "versions": [
            {"name": "v1", "weight": 50, "kserve": {"service": "k1", "namespace": "ml", "port": 80}},
            {"name": "v2", "weight": 50, "endpoints": ["10.0.0.9:80"]},
        ],
    }
    p = policy(kserve)
    down = {EndpointKey("k", "v1", "k1-predictor.ml.svc.cluster.local:80"): U}
    before, after = compile_snapshot(p), compile_snapshot(p, health=down)
    assert after[CLUSTER]["model|k|v1"].version == before[CLUSTER]["model|k|v1"].version  # no health marks
    inline = before[CLUSTER]["model|k|v1"].message.load_assignment
    assert [loc.priority for loc in inline.endpoints] == [0, 1]
    # the EDS cluster of v2 takes IP endpoints only: the DNS name of v1 cannot be its failover
    assert list(priorities(after, "model|k|v2")) == [0]


def test_other_models_are_untouched() -> None:
    p = policy(two_endpoints("m"), model("other", {"v1": 100}, port=9100))
    before = compile_snapshot(p)
    after = compile_snapshot(p, health={key("v2", "10.0.0.3:80"): U})
    assert after[ENDPOINT]["model|other|v1"].version == before[ENDPOINT]["model|other|v1"].version


def test_update_health_equals_a_full_compile_and_changes_only_assignments() -> None:
    p = policy(two_endpoints("m"), model("other", {"v1": 100}, port=9100))
    base = compile_snapshot(p)
    health = {key("v2", "10.0.0.3:80"): U}
    updated = update_health(base, p, health, models={"m"})
    assert updated.version == compile_snapshot(p, health=health).version
    for type_url in (LISTENER, ROUTE, CLUSTER, SECRET):
        assert updated.versions[type_url] == base.versions[type_url]
    changed = {n for n, r in updated[ENDPOINT].items() if r.version != base[ENDPOINT][n].version}
    assert changed == {"model|m|v1", "model|m|v2"}  # v2 itself, and v1 whose failover lists v2
    assert updated[ENDPOINT]["model|other|v1"] is base[ENDPOINT]["model|other|v1"]  # not re-serialized


class FakeReadiness:
    def __init__(self) -> None:
        self.states: dict[EndpointKey, EndpointState] = {}
        self.callbacks: list[ChangeCallback] = []

    def health(self, model: str, version: str, endpoint: str) -> EndpointHealth:
        state = self.states.get(EndpointKey(model, version, endpoint))
        return state.health if state else K

    def snapshot(self) -> Mapping[EndpointKey, EndpointState]:
        return dict(self.states)

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def set(self, k: EndpointKey, health: EndpointHealth) -> None:
        self.states[k] = EndpointState(health=health)
        for callback in list(self.callbacks):
            callback({k: health})


def service_with(p: Policy, readiness: FakeReadiness) -> XdsService:
    service = XdsService(readiness=readiness)
    readiness.on_change(service.health_changed)  # what start() does
    service.prepare(p)()  # no event loop: published at once
    return service


def test_service_publishes_a_health_change_with_only_eds_changed() -> None:
    readiness = FakeReadiness()
    readiness.states[key("v2", "10.0.0.3:80")] = EndpointState(health=H)
    p = policy(two_endpoints())
    service = service_with(p, readiness)
    first = service.cache.current
    assert first is not None
    assert statuses(first, "model|m|v2") == [HEALTHY_]  # prepare reads the prober

    readiness.set(key("v1", "10.0.0.1:80"), U)
    second = service.cache.current
    assert second is not None and second.version != first.version
    assert statuses(second, "model|m|v1") == [UNHEALTHY_, UNKNOWN_]
    for type_url in (LISTENER, ROUTE, CLUSTER, SECRET):
        assert second.versions[type_url] == first.versions[type_url]

    readiness.set(key("v2", "10.0.0.3:80"), U)
    third = service.cache.current
    assert third is not None and statuses(third, "model|m|v2") == [UNHEALTHY_]

    readiness.set(key("v2", "10.0.0.3:80"), H)  # it comes back
    back = service.cache.current
    assert back is not None and statuses(back, "model|m|v2") == [HEALTHY_]


def test_service_without_a_policy_ignores_health_changes() -> None:
    readiness = FakeReadiness()
    service = XdsService(readiness=readiness)
    readiness.on_change(service.health_changed)
    readiness.set(key("v1", "10.0.0.1:80"), U)
    assert service.cache.current is None


def test_a_new_policy_is_compiled_with_the_current_health() -> None:
    readiness = FakeReadiness()
    service = service_with(policy(two_endpoints()), readiness)
    readiness.set(key("v2", "10.0.0.3:80"), U)
    moved = policy(two_endpoints(), port=9090)  # another change: the health must stay applied
    service.prepare(moved)()
    current = service.cache.current
    assert current is not None and statuses(current, "model|m|v2") == [UNHEALTHY_]


def test_start_subscribes_to_the_prober_and_stop_unsubscribes() -> None:
    async def scenario() -> None:
        readiness = FakeReadiness()
        service = XdsService(readiness=readiness, quiet=0.0, max_delay=0.0)
        service.prepare(policy(two_endpoints()))()
        readiness.states[key("v2", "10.0.0.3:80")] = EndpointState(health=U)  # probed before start
        await service.start()
        try:
            assert len(readiness.callbacks) == 1
            for _ in range(3):  # the debounce timer (0 s) fires on the next loop iterations
                await asyncio.sleep(0)
            current = service.cache.current
            assert current is not None and statuses(current, "model|m|v2") == [UNHEALTHY_]
            readiness.set(key("v2", "10.0.0.3:80"), H)
            for _ in range(3):
                await asyncio.sleep(0)
            current = service.cache.current
            assert current is not None and statuses(current, "model|m|v2") == [HEALTHY_]
        finally:
            await service.stop()
        assert readiness.callbacks == []

    asyncio.run(scenario())
