"""The protocol-neutral stream state machine, driven by request protos alone (no sockets)."""

from __future__ import annotations

import logging

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from meshgate.clip import LOGGED_STRING_BYTES, clip
from meshgate.xds import CompileOptions, Snapshot, SnapshotCache, compile_snapshot
from meshgate.xds._stream import MAX_NAMES, Step, Stream, TooManyNames
from meshgate.xds._types import CLUSTER, ENDPOINT, LISTENER, ROUTE, short
from meshgate.xds.delta import DeltaHandler
from meshgate.xds.sotw import SotwHandler
from meshgate.xds.status import NodeStatus
from tests.unit.test_xds_support import model, policy

BARE = CompileOptions(enable_extauthz=False, enable_ratelimit=False)


def snap(weights: dict[str, int]) -> Snapshot:
    return compile_snapshot(policy(model("a", weights)), BARE)


class Harness:
    def __init__(self, first: Snapshot, *, delta: bool = False) -> None:
        self.cache = SnapshotCache()
        self.cache.publish(first)
        self.nacks: list[str] = []
        self.converged: list[float] = []
        self.stream = Stream(
            "n",
            self.cache,
            NodeStatus("n", "test"),
            on_nack=self.nacks.append,
            on_converged=self.converged.append,
        )
        self.handler: SotwHandler | DeltaHandler = DeltaHandler() if delta else SotwHandler()
        self.delta = delta

    def request(
        self, type_url: str, names: list[str] | None = None, *, nonce: str = "", error: str = ""
    ) -> None:
        names = names or []
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, resource_names_subscribe=names, response_nonce=nonce
            )
        else:
            req = discovery_pb2.DiscoveryRequest(
                type_url=type_url, resource_names=names, response_nonce=nonce
            )
        if error:
            req.error_detail.message = error
        self.handler.on_request(self.stream, req)  # type: ignore[arg-type]

    def plan(self) -> list[Step]:
        steps = self.stream.plan()
        for step in steps:
            self.stream.sent(step)
        return steps

    def ack_all(self, steps: list[Step]) -> None:
        for step in steps:
            st = self.stream.types[step.type_url]
            self.request(step.type_url, sorted(st.names), nonce=step.nonce)


def kinds(steps: list[Step]) -> list[str]:
    return [short(s.type_url) for s in steps]


def boot(h: Harness) -> None:
    """Envoy's start-up: CDS, EDS for every cluster, LDS, RDS; ACK all."""
    h.request(CLUSTER)
    h.request(LISTENER)
    h.ack_all(h.plan())
    h.request(ENDPOINT, sorted(h.cache.serving()[ENDPOINT]))  # type: ignore[index]
    h.request(ROUTE, ["meshgate_routes"])
    while steps := h.plan():
        h.ack_all(steps)


def test_a_new_version_arrives_clusters_first_routes_next_removals_last() -> None:
    h = Harness(snap({"v1": 100}))
    boot(h)
    assert len(h.converged) == 1
    h.cache.publish(compile_snapshot(policy(model("a", {"v2": 100}, port=9001)), BARE))
    first = h.plan()
    assert kinds(first) == ["Cluster"]
    assert sorted(first[0].view) == ["model|a|v1", "model|a|v2"]  # nothing removed yet
    h.ack_all(first)
    h.request(ENDPOINT, ["model|a|v1", "model|a|v2"])
    eds = h.plan()
    assert kinds(eds) == ["ClusterLoadAssignment"]
    h.ack_all(eds)
    routes = h.plan()
    assert kinds(routes) == ["RouteConfiguration"]
    h.ack_all(routes)
    last = h.plan()
    assert kinds(last) == ["Cluster", "ClusterLoadAssignment"]
    assert sorted(last[0].view) == ["model|a|v2"]
    h.ack_all(last)
    assert h.plan() == [] and len(h.converged) == 2


def test_nack_reverts_halts_and_is_never_resent() -> None:
    first = snap({"v1": 90, "v2": 10})
    h = Harness(first)
    boot(h)
    bad = snap({"v1": 10, "v2": 90})
    h.cache.publish(bad)
    [rds] = h.plan()
    h.request(ROUTE, ["meshgate_routes"], nonce=rds.nonce, error="no")
    assert h.nacks == [ROUTE] and h.cache.rejected(bad.version)
    assert h.cache.serving() is first
    assert h.plan() == []  # Envoy still has first's routes: nothing to send, bad is not resent
    assert h.stream.types[ROUTE].sent == {"meshgate_routes": first[ROUTE]["meshgate_routes"].version}


def test_a_proxys_words_are_clipped_in_logs_and_status(caplog: pytest.LogCaptureFixture) -> None:
    """A NACK's error message and the node id are the proxy's: at most LOGGED_STRING_BYTES of each in
    the log lines, the stream's state and the status report."""
    first = snap({"v1": 90, "v2": 10})
    h = Harness(first)
    h.stream.node = h.stream.status.node = "n" * 100_000
    boot(h)
    h.cache.publish(snap({"v1": 10, "v2": 90}))
    [rds] = h.plan()
    caplog.set_level(logging.INFO)
    h.request(ROUTE, ["meshgate_routes"], nonce=rds.nonce, error="e" * 100_000)
    assert h.nacks == [ROUTE] and h.stream.types[ROUTE].error == clip("e" * 100_000)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all(len(line) < 3 * LOGGED_STRING_BYTES for line in lines)  # NACK, rejected
    shown = h.stream.status.as_dict()
    assert shown["node"] == clip("n" * 100_000) and shown["types"]["RouteConfiguration"]["error"] == clip(
        "e" * 100_000
    )


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_subscription_past_the_bounds_ends_the_stream(delta: bool) -> None:
    """Past MAX_NAMES names, or MAX_NAME_BYTES bytes of names, of one type: TooManyNames (the servicer
    ends the stream INVALID_ARGUMENT). A delta stream adds names request after request."""
    h = Harness(snap({"v1": 100}), delta=delta)
    h.request(ENDPOINT, [f"c{i}" for i in range(MAX_NAMES)])
    if delta:
        with pytest.raises(TooManyNames, match="more than 65536 ClusterLoadAssignment names"):
            h.request(ENDPOINT, ["one-more"])
    else:
        with pytest.raises(TooManyNames):
            h.request(ENDPOINT, [f"c{i}" for i in range(MAX_NAMES + 1)])
    big = "x" * (1 << 20)
    h = Harness(snap({"v1": 100}), delta=delta)
    h.request(ENDPOINT, [f"{i}{big}" for i in range(3)])
    with pytest.raises(TooManyNames):
        h.request(ENDPOINT, [f"{i}{big}" for i in range(5)])


def test_stale_nonce_is_not_an_ack() -> None:
    h = Harness(snap({"v1": 90, "v2": 10}), delta=True)
    h.request(CLUSTER)
    [cds] = h.plan()
    h.request(CLUSTER, nonce="not-" + cds.nonce)
    assert h.stream.types[CLUSTER].nonce == cds.nonce  # still waiting for the real answer
    h.request(CLUSTER, nonce=cds.nonce)
    assert h.stream.types[CLUSTER].nonce is None
    assert h.stream.types[CLUSTER].acked == {n: r.version for n, r in h.cache.serving()[CLUSTER].items()}  # type: ignore[index]


def test_changed_cluster_gets_its_endpoints_again() -> None:
    h = Harness(snap({"v1": 90, "v2": 10}))
    boot(h)
    changed = compile_snapshot(
        policy(model("a", {"v1": 90, "v2": 10}, timeout="5s", circuit_breaker={"max_requests": 7})), BARE
    )
    h.cache.publish(changed)
    [cds] = h.plan()
    h.ack_all([cds])
    [eds] = h.plan()  # the endpoints did not change, but Envoy re-warms the changed clusters
    assert kinds([eds]) == ["ClusterLoadAssignment"]
    assert sorted(r.name for r in eds.changed) == ["model|a|v1", "model|a|v2"]


def test_convergence_waits_for_every_type_envoy_will_ask_for() -> None:
    """meshgate_xds_convergence_seconds ends when the proxy holds the whole snapshot: not on a plan made
    before its first request, nor between CDS and the EDS and RDS requests that follow its ACK."""
    h = Harness(snap({"v1": 100}))
    assert h.plan() == [] and h.converged == []  # no request yet
    h.request(CLUSTER)
    h.ack_all(h.plan())
    assert h.plan() == [] and h.converged == []  # clusters held; no endpoint asked for, no listener
    h.request(LISTENER)
    h.request(ENDPOINT, sorted(h.cache.serving()[ENDPOINT]))  # type: ignore[index]
    while steps := h.plan():
        h.ack_all(steps)
    assert h.converged == []  # the listener's route configuration is not asked for yet
    h.request(ROUTE, ["meshgate_routes"])
    while steps := h.plan():
        h.ack_all(steps)
    assert len(h.converged) == 1
