"""The ADS server on a real grpc.aio server (port 0) driven by a real stub: SotW and delta."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry

from meshgate.xds import CompileOptions, Snapshot, XdsService, compile_snapshot
from meshgate.xds._types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.harness.grpc_service import serving as serving_service
from tests.harness.procs import eventually
from tests.unit.test_xds_support import model, policy

BARE = CompileOptions(enable_extauthz=False, enable_ratelimit=False)
TIMEOUT = 10.0


def snap(weights: dict[str, int], **extra: Any) -> Snapshot:
    return compile_snapshot(policy(model("a", weights, **extra)), BARE)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


class Client:
    """One ADS stream: `send` requests, `recv` responses (failing after TIMEOUT, never sleeping)."""

    def __init__(self, channel: grpc.aio.Channel, *, delta: bool, node: str = "node-1") -> None:
        self.delta = delta
        self.node = node
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.call = method(self._requests())

    async def _requests(self) -> AsyncIterator[Any]:
        while (item := await self._out.get()) is not None:
            yield item

    def send(
        self,
        type_url: str,
        names: list[str] | None = None,
        *,
        nonce: str = "",
        version: str = "",
        error: str | None = None,
        unsubscribe: list[str] | None = None,
        initial: dict[str, str] | None = None,
    ) -> None:
        node = base_pb2.Node(id=self.node)
        detail = status_pb2.Status(code=3, message=error) if error else None
        if self.delta:
            request = discovery_pb2.DeltaDiscoveryRequest(
                node=node,
                type_url=type_url,
                resource_names_subscribe=names or [],
                resource_names_unsubscribe=unsubscribe or [],
                response_nonce=nonce,
                initial_resource_versions=initial or {},
            )
        else:
            request = discovery_pb2.DiscoveryRequest(
                node=node,
                type_url=type_url,
                resource_names=names or [],
                response_nonce=nonce,
                version_info=version,
            )
        if detail is not None:
            request.error_detail.CopyFrom(detail)
        self._out.put_nowait(request)

    async def recv(self) -> Any:
        return await asyncio.wait_for(self.call.read(), TIMEOUT)

    def ack(self, response: Any, names: list[str] | None = None) -> None:
        if self.delta:
            self.send(response.type_url, nonce=response.nonce)
        else:
            self.send(response.type_url, names, nonce=response.nonce, version=response.version_info)

    def nack(self, response: Any, names: list[str] | None = None) -> None:
        self.send(response.type_url, names, nonce=response.nonce, error="bad config")

    def close(self) -> None:
        self._out.put_nowait(None)


def names(response: Any) -> list[str]:
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return sorted(r.name for r in response.resources)
    return sorted(_name(r) for r in response.resources)


def _name(packed: Any) -> str:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2

    kinds = {
        CLUSTER: cluster_pb2.Cluster,
        ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
        LISTENER: listener_pb2.Listener,
        ROUTE: route_pb2.RouteConfiguration,
    }
    message = kinds[packed.type_url]()
    packed.Unpack(message)
    return str(getattr(message, "cluster_name", "") or message.name)


@contextlib.asynccontextmanager
async def serving(first: Snapshot) -> AsyncIterator[tuple[XdsService, grpc.aio.Channel]]:
    service = XdsService(options=BARE, registry=CollectorRegistry(), quiet=0.0, max_delay=0.0)
    service.cache.publish(first)
    async with serving_service(service) as channel:
        yield service, channel


async def converge(client: Client) -> dict[str, Any]:
    """Play Envoy's start-up: CDS, EDS for the clusters, LDS, RDS; ACK everything. Returns the last of each."""
    last: dict[str, Any] = {}
    client.send(CLUSTER)
    client.send(LISTENER)
    eds = rds = False
    while not all(t in last for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)):
        response = await client.recv()
        last[response.type_url] = response
        if response.type_url == CLUSTER:
            client.ack(response)
            if not eds:
                eds = True
                client.send(ENDPOINT, ["model|a|v1", "model|a|v2"])
        elif response.type_url == LISTENER:
            client.ack(response)
            if not rds:
                rds = True
                client.send(ROUTE, ["meshgate_routes"])
        elif response.type_url == ENDPOINT:
            client.ack(response, ["model|a|v1", "model|a|v2"])
        elif response.type_url == ROUTE:
            client.ack(response, ["meshgate_routes"])
            last[ROUTE] = response
    return last


def test_sotw_ack_then_push_only_what_changed() -> None:
    async def scenario() -> None:
        first = snap({"v1": 90, "v2": 10})
        async with serving(first) as (service, channel):
            client = Client(channel, delta=False)
            last = await converge(client)
            assert names(last[CLUSTER]) == ["model|a|v1", "model|a|v2"]
            assert last[ROUTE].version_info == first.versions[ROUTE]
            second = snap({"v1": 50, "v2": 50})
            service.schedule(second)
            response = await client.recv()  # only the routes changed: nothing else is sent
            assert (response.type_url, response.version_info) == (ROUTE, second.versions[ROUTE])
            client.ack(response, ["meshgate_routes"])
            status = service.client_status()
            assert status[0]["node"] == "node-1"
            assert status[0]["types"]["RouteConfiguration"]["sent"] == second.versions[ROUTE]
            client.close()

    run(scenario)


def test_sotw_nack_is_not_resent_and_reconnect_gets_last_acked() -> None:
    async def scenario() -> None:
        first = snap({"v1": 90, "v2": 10})
        async with serving(first) as (service, channel):
            client = Client(channel, delta=False)
            await converge(client)
            bad = snap({"v1": 20, "v2": 80})
            service.schedule(bad)
            response = await client.recv()
            assert response.version_info == bad.versions[ROUTE]
            client.nack(response, ["meshgate_routes"])
            third = snap({"v1": 30, "v2": 70})
            service.schedule(third)
            response = await client.recv()  # the next thing sent is the new version, never `bad` again
            assert response.version_info == third.versions[ROUTE]
            client.nack(response, ["meshgate_routes"])  # rejected too: now nothing good but `first`
            await eventually(lambda: service.cache.rejected(third.version))
            entry = service.client_status()[0]["types"]["RouteConfiguration"]
            client.close()

            again = Client(channel, delta=False)
            last = await converge(again)
            assert last[ROUTE].version_info == first.versions[ROUTE]  # the last ACKed, not a rejected one
            again.close()
        assert entry["nacks"] == 2 and entry["acked"] == first.versions[ROUTE]
        assert service.cache.rejected(bad.version) and service.cache.rejected(third.version)

    run(scenario)


def test_sotw_stale_nonce_is_no_ack_but_its_names_count() -> None:
    async def scenario() -> None:
        async with serving(snap({"v1": 90, "v2": 10})) as (_service, channel):
            client = Client(channel, delta=False)
            client.send(CLUSTER)
            cds = await client.recv()
            client.ack(cds)
            client.send(ENDPOINT, ["model|a|v1"])
            eds1 = await client.recv()
            assert names(eds1) == ["model|a|v1"]
            # a request carrying an old nonce: not an ACK of eds1, but it asks for v2 as well
            client.send(ENDPOINT, ["model|a|v1", "model|a|v2"], nonce="stale")
            client.ack(eds1, ["model|a|v1", "model|a|v2"])
            eds2 = await client.recv()
            assert names(eds2) == ["model|a|v1", "model|a|v2"]
            assert eds2.version_info != eds1.version_info
            client.close()

    run(scenario)


def test_make_before_break_order_and_removals_last() -> None:
    async def scenario() -> None:
        async with serving(snap({"v1": 100})) as (service, channel):
            client = Client(channel, delta=False)
            await converge(client)
            # add v2 and route to it: clusters and endpoints before routes
            service.schedule(snap({"v1": 50, "v2": 50}))
            cds = await client.recv()
            assert cds.type_url == CLUSTER and names(cds) == ["model|a|v1", "model|a|v2"]
            client.ack(cds)
            client.send(ENDPOINT, ["model|a|v1", "model|a|v2"])
            seen = []
            while True:
                response = await client.recv()
                seen.append(response.type_url)
                client.ack(
                    response,
                    ["model|a|v1", "model|a|v2"] if response.type_url == ENDPOINT else ["meshgate_routes"],
                )
                if response.type_url == ROUTE:
                    break
            assert seen[-1] == ROUTE and ENDPOINT in seen
            # drop v1: the routes stop using it first, the cluster goes after (v2's assignment, which
            # listed v1's endpoints as its failover priority, may change before: a change, not a removal)
            service.schedule(compile_snapshot(policy(model("a", {"v2": 100}, port=9001)), BARE))
            rds = await client.recv()
            while rds.type_url == ENDPOINT:
                client.ack(rds, ["model|a|v1", "model|a|v2"])
                rds = await client.recv()
            assert rds.type_url == ROUTE
            client.ack(rds, ["meshgate_routes"])
            cds = await client.recv()
            assert cds.type_url == CLUSTER and names(cds) == ["model|a|v2"]
            client.close()

    run(scenario)


def test_delta_subscribe_unsubscribe_and_removal() -> None:
    async def scenario() -> None:
        async with serving(snap({"v1": 50, "v2": 50})) as (service, channel):
            client = Client(channel, delta=True)
            client.send(CLUSTER)
            cds = await client.recv()
            assert names(cds) == ["model|a|v1", "model|a|v2"] and not cds.removed_resources
            client.ack(cds)
            client.send(ENDPOINT, ["model|a|v1"])
            eds = await client.recv()
            assert names(eds) == ["model|a|v1"]
            client.ack(eds)
            client.send(ENDPOINT, ["model|a|v2"], unsubscribe=["model|a|v1"])
            eds = await client.recv()
            assert names(eds) == ["model|a|v2"]  # only the new name: v1 is not sent again
            client.ack(eds)
            # v2 leaves the policy: CDS removes it (no routes are subscribed, so nothing waits)
            service.schedule(compile_snapshot(policy(model("a", {"v1": 100})), BARE))
            responses = {}
            while CLUSTER not in responses or not responses[CLUSTER].removed_resources:
                response = await client.recv()
                responses[response.type_url] = response
                client.ack(response)
            assert list(responses[CLUSTER].removed_resources) == ["model|a|v2"]
            assert service.client_status()[0]["protocol"] == "delta"
            client.close()

    run(scenario)


def test_delta_reconnect_sends_only_what_differs() -> None:
    async def scenario() -> None:
        first = snap({"v1": 50, "v2": 50})
        async with serving(first) as (_service, channel):
            client = Client(channel, delta=True)
            have = {n: r.version for n, r in first[CLUSTER].items() if n != "model|a|v2"}
            have["model|a|v2"] = "stale-version"
            client.send(CLUSTER, initial=have)
            cds = await client.recv()
            assert names(cds) == ["model|a|v2"]
            client.close()

    run(scenario)


def test_delta_nack_not_resent() -> None:
    async def scenario() -> None:
        async with serving(snap({"v1": 50, "v2": 50})) as (service, channel):
            client = Client(channel, delta=True)
            client.send(LISTENER)
            lds = await client.recv()
            client.ack(lds)
            client.send(ROUTE, ["meshgate_routes"])
            rds = await client.recv()
            client.ack(rds)
            bad = snap({"v1": 10, "v2": 90})
            service.schedule(bad)
            rds = await client.recv()
            assert rds.resources[0].version == bad[ROUTE]["meshgate_routes"].version
            client.nack(rds)
            good = snap({"v1": 20, "v2": 80})
            service.schedule(good)
            rds = await client.recv()
            assert rds.resources[0].version == good[ROUTE]["meshgate_routes"].version
            client.close()

    run(scenario)


def test_csds_reports_acked_and_nacked_per_node() -> None:
    from envoy.admin.v3 import config_dump_shared_pb2 as shared
    from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

    async def scenario() -> None:
        first = snap({"v1": 90, "v2": 10})
        async with serving(first) as (service, channel):
            client = Client(channel, delta=False, node="gw-csds")
            await converge(client)
            service.schedule(snap({"v1": 1, "v2": 99}))
            response = await client.recv()
            client.nack(response, ["meshgate_routes"])
            await eventually(lambda: bool(service.client_status()[0]["types"]["RouteConfiguration"]["nacks"]))
            csds = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
            request = csds_pb2.ClientStatusRequest()
            request.node_matchers.add().node_id.exact = "gw-csds"
            status = await csds.FetchClientStatus(request)
            [config] = status.config
            assert config.node.id == "gw-csds"
            by_name = {(c.type_url, c.name): c for c in config.generic_xds_configs}
            routes = by_name[(ROUTE, "meshgate_routes")]
            assert routes.client_status == shared.ACKED
            assert (
                routes.version_info == first[ROUTE]["meshgate_routes"].version
            )  # the NACKed one is not held
            assert by_name[(ROUTE, "")].client_status == shared.NACKED
            assert by_name[(ROUTE, "")].error_state.details == "bad config"
            assert by_name[(CLUSTER, "model|a|v1")].client_status == shared.ACKED
            other = csds_pb2.ClientStatusRequest()
            other.node_matchers.add().node_id.exact = "someone-else"
            assert not (await csds.FetchClientStatus(other)).config
            client.close()

    run(scenario)
