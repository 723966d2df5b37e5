"""The xds role: compiles each policy into a snapshot (prepare), publishes it debounced (commit),
and serves it over ADS, state-of-the-world and delta, on one gRPC server.

The certificate files a policy names are one input of the reload pipeline (meshgate/policy/watch.py):
`certificate_paths` says which, `prepare_certificates` compiles a snapshot with their new bytes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry

from meshgate.clip import clip
from meshgate.files import read_bounded
from meshgate.models import EndpointHealth, EndpointKey, Readiness
from meshgate.policy.model import Policy
from meshgate.tracing import incoming

from ._fast import fast_path
from ._gateways import GATEWAYS_CLUSTER, Gateways, gateways_assignment
from ._loop import run_stream
from ._shared_gateways import SharedGateways
from ._types import ENDPOINT, short
from ._wire import Malformed, abort_malformed, parsed, register
from .cache import SnapshotCache
from .compile import EndpointHealthMap, cert_files, compile_snapshot, refresh_routes, update_health
from .csds import CSDS_SERVICE, ClientStatus
from .delta import DeltaHandler
from .metrics import XdsMetrics
from .options import CompileOptions
from .snapshot import Snapshot
from .sotw import SotwHandler
from .status import StatusBoard

__all__ = ["ADS_SERVICE", "XdsService"]

log = logging.getLogger("meshgate.xds")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _read(path: str) -> bytes:
    return read_bounded(path, what="certificate file")


class XdsService:
    """`prepare` for PolicyStore.subscribe; `add_to_server` for the composition root.

    With `readiness` (the model prober), EDS endpoints carry each endpoint's health (a version with no
    healthy endpoint fails over to the model's other versions); a health change rebuilds only the
    assignments of the models it touched, published debounced.
    """

    grpc_names: tuple[str, ...] = (ADS_SERVICE, CSDS_SERVICE)

    def __init__(
        self,
        *,
        options: CompileOptions | None = None,
        registry: CollectorRegistry | None = None,
        quiet: float = 0.1,
        max_delay: float = 1.0,
        read_file: Callable[[str], bytes] = _read,
        readiness: Readiness | None = None,
        tracer_provider: Any = None,
        gateways_redis: Any = None,
    ) -> None:
        self.options = options or CompileOptions()
        self.tracer = tracer_provider.get_tracer("meshgate.xds") if tracer_provider is not None else None
        """An OpenTelemetry tracer: each response an ADS stream sends is an `xds.push` span."""
        self.readiness = readiness
        self._unsubscribe: Callable[[], None] | None = None
        self._latest: Snapshot | None = None
        """The newest snapshot scheduled (pending or published): health updates apply on top of it."""
        self._latest_health: EndpointHealthMap = {}
        """The health `_latest` was compiled with."""
        self.cache = SnapshotCache()
        self.board = StatusBoard()
        self.metrics = XdsMetrics(registry)
        self._quiet, self._max_delay = quiet, max_delay
        self._read_file = read_file
        self._pending: Snapshot | None = None
        self._first_pending = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._policy: Policy | None = None
        self.gateways = Gateways(self._gateways_changed)
        """The gateways whose ADS stream asked for their local cluster's endpoints (`_gateways`)."""
        self._serving: tuple[str, ...] = ()
        self.shared = (
            SharedGateways(gateways_redis, self.gateways, self._members_changed)
            if gateways_redis is not None
            else None
        )
        """With a Redis client: the gateways of every replica (`_shared_gateways`), not only this one's."""

    # --- policy -> snapshot -------------------------------------------------------------------
    def prepare(self, policy: Policy) -> Callable[[], None]:
        """Compile (raises on an invalid or inconsistent result); the returned commit publishes it."""
        paths = cert_files(policy)
        files = {path: self._read_file(path) for path in paths}
        health = self._health_now()
        snapshot = compile_snapshot(policy, self.options, files=files, health=health)

        def commit() -> None:
            self._policy = policy
            self._latest, self._latest_health = self._with_gateways(snapshot), health
            self.schedule(self._latest)
            if self._health_now() != health:  # changed between prepare and commit
                self.health_changed({})

        return commit

    # --- connected gateways -> EDS of their local cluster ---------------------------------------
    def members(self) -> tuple[str, ...]:
        """The gateways counted: this replica's, and with Redis every replica's."""
        return self.shared.members() if self.shared is not None else self.gateways.members()

    def _with_gateways(self, snapshot: Snapshot) -> Snapshot:
        assignment = gateways_assignment(self.members())
        return snapshot.replace({ENDPOINT: [(GATEWAYS_CLUSTER, assignment)]})

    def _gateways_changed(self) -> None:
        """A gateway came to or left this replica (with Redis, one that left is forgotten there now)."""
        serving = self.gateways.members()
        if self.shared is not None:
            for node in set(self._serving) - set(serving):
                self.shared.left(node)
        self._serving = serving
        self._members_changed()

    def _members_changed(self) -> None:
        """Only the endpoints of the gateways' cluster change (never the routes, whose rebuild would
        refill every native quota's buckets)."""
        if self._latest is None:
            return
        self._latest = self._with_gateways(self._latest)
        log.info("xds: %d gateway(s) counted, %d connected here", len(self.members()), len(self.gateways))
        self.schedule(self._latest)

    # --- endpoint health -> EDS ---------------------------------------------------------------
    def _health_now(self) -> dict[EndpointKey, EndpointHealth]:
        if self.readiness is None:
            return {}
        return {key: state.health for key, state in self.readiness.snapshot().items()}

    def health_changed(self, changes: Mapping[EndpointKey, EndpointHealth]) -> None:
        """The prober's on_change callback: rebuild what the changed endpoints touch, publish debounced.

        Every model whose health differs from what the newest snapshot was compiled with is rebuilt
        (`changes` names the usual one; a change missed in between is caught up too)."""
        if self._policy is None or self._latest is None:
            return
        after = self._health_now()
        before = self._latest_health
        models = {key.model for key in changes}
        unknown = EndpointHealth.UNKNOWN
        models |= {
            key.model
            for key in before.keys() | after.keys()
            if before.get(key, unknown) != after.get(key, unknown)
        }
        try:
            snapshot = update_health(self._latest, self._policy, after, models=models)
        except Exception:  # never break the prober's loop; the next change or policy retries
            log.exception("xds: endpoint health update failed; keeping the previous endpoints")
            return
        self._latest, self._latest_health = snapshot, after
        scheduled = self._pending or self.cache.current
        if scheduled is None or scheduled.version != snapshot.version:
            log.info("xds: endpoint health of %s changed", ", ".join(sorted(models)))
            self.schedule(snapshot)

    # --- the clock -> the native fast routes ------------------------------------------------------
    def refresh_routes(self, now: float | None = None) -> None:
        """Compile the routes again at `now` (the native fast routes' iat bound moves with the clock,
        `_fast`); every other resource, and the native quotas' buckets (on the listener), are kept."""
        if self._policy is None or self._latest is None or not fast_path(self._policy):
            return
        try:
            snapshot = refresh_routes(
                self._latest, self._policy, self.options, now=time.time() if now is None else now
            )
        except Exception:  # never break the loop; the routes compiled before stay (correct, slower)
            log.exception("xds: the native fast routes could not be refreshed")
            return
        self._latest = snapshot
        self.schedule(snapshot)

    async def _refresh_routes(self) -> None:
        while True:
            await asyncio.sleep(self.options.fast_refresh)
            self.refresh_routes()

    def certificate_paths(self) -> tuple[str, ...]:
        """The certificate files the live policy names (served inline over SDS)."""
        return tuple(cert_files(self._policy)) if self._policy is not None else ()

    def prepare_certificates(self) -> Callable[[], None] | None:
        """Compile the live policy with the certificate files as they are now: the commit that publishes
        it (a snapshot with unchanged bytes keeps its version), or None when it cannot be compiled."""
        if self._policy is None:
            return None
        try:
            return self.prepare(self._policy)
        except Exception:  # an unreadable or half-written file: keep serving the last good secrets
            log.exception("certificates could not be reloaded; keeping the previous ones")
            return None

    def reload_certificates(self) -> None:
        """Read the certificate files again and publish now (tests; `meshgate serve` uses the pipeline)."""
        commit = self.prepare_certificates()
        if commit is not None:
            commit()

    def schedule(self, snapshot: Snapshot) -> None:
        """Publish after `quiet` seconds without another change, at most `max_delay` after the first."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self.cache.current is None:
            self._publish(snapshot, since=None)
            return
        now = time.monotonic()
        if self._pending is None:
            self._first_pending = now
        self._pending = snapshot
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, min(self._quiet, self._first_pending + self._max_delay - now))
        self._timer = loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._pending is not None:
            snapshot, self._pending = self._pending, None
            self._publish(snapshot, since=self._first_pending)

    def _publish(self, snapshot: Snapshot, *, since: float | None) -> None:
        self.cache.publish(snapshot, since=since)  # convergence is timed from the first change
        self.metrics.published(snapshot)
        log.info("xds snapshot %s published (%d bytes)", snapshot.version, snapshot.size)

    # --- gRPC ---------------------------------------------------------------------------------
    def add_to_server(self, server: grpc.aio.Server) -> None:
        """ADS and CSDS; requests are parsed by the servicers (a malformed one is INVALID_ARGUMENT)."""
        ads = _Ads(self)
        register(server, ADS_SERVICE, {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                ads.StreamAggregatedResources,
                response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                ads.DeltaAggregatedResources,
                response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
            ),
        })  # fmt: skip
        ClientStatus(self.board).add_to_server(server)

    async def start(self) -> None:
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_routes())
        if self.shared is not None:
            await self.shared.start()
        if self.readiness is not None and self._unsubscribe is None:
            self._unsubscribe = self.readiness.on_change(self.health_changed)
            self.health_changed({})  # probes that finished before the xds service started

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if self.shared is not None:
            await self.shared.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._timer is not None:
            self._timer.cancel()
            self._flush()

    def client_status(self) -> list[dict[str, Any]]:
        """Per connected stream: node, protocol, and per type the versions sent, ACKed and NACKed."""
        return self.board.snapshot()


class _Ads:
    """AggregatedDiscoveryService over request bytes (see `add_to_server`)."""

    def __init__(self, service: XdsService) -> None:
        self._s = service

    async def StreamAggregatedResources(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        s = self._s
        node = _Node(s.gateways)
        try:
            async for response in _pushes(s.tracer, context, node, "sotw", run_stream(
                node.noted(parsed(discovery_pb2.DiscoveryRequest, requests)), SotwHandler(),
                cache=s.cache, board=s.board, observer=s.metrics,
            )):  # fmt: skip
                yield response
        except Malformed as exc:
            await abort_malformed(context, "StreamAggregatedResources", exc)
        finally:
            node.left()

    async def DeltaAggregatedResources(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        s = self._s
        node = _Node(s.gateways)
        try:
            async for response in _pushes(s.tracer, context, node, "delta", run_stream(
                node.noted(parsed(discovery_pb2.DeltaDiscoveryRequest, requests)), DeltaHandler(),
                cache=s.cache, board=s.board, observer=s.metrics,
            )):  # fmt: skip
                yield response
        except Malformed as exc:
            await abort_malformed(context, "DeltaAggregatedResources", exc)
        finally:
            node.left()


class _Node:
    """The node id of a stream, read from its requests as they pass (for the push spans); a node
    that asks for the gateways' local cluster joins `gateways` until its stream ends."""

    def __init__(self, gateways: Gateways) -> None:
        self.id = ""
        self._gateways = gateways
        self._joined = False

    async def noted(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            if not self.id:
                self.id = request.node.id
            if not self._joined and request.type_url == ENDPOINT and GATEWAYS_CLUSTER in _names_in(request):
                self._joined = True
                self._gateways.join(self.id)
            yield request

    def left(self) -> None:
        if self._joined:
            self._joined = False
            self._gateways.leave(self.id)


def _names_in(request: Any) -> Any:
    """The resource names a request asks for (delta: those it subscribes to)."""
    if isinstance(request, discovery_pb2.DeltaDiscoveryRequest):
        return request.resource_names_subscribe
    return request.resource_names


async def _pushes(
    tracer: Any, context: grpc.aio.ServicerContext[Any, Any], node: _Node, protocol: str,
    responses: AsyncIterator[Any],
) -> AsyncIterator[Any]:  # fmt: skip
    """The stream's responses; with a tracer, each is an `xds.push` span (its parent: the trace context
    of the stream's own gRPC metadata, if any), open until gRPC asks for the next response. Not made
    the current span: the generator resumes in other contexts than the one it was suspended in."""
    if tracer is None:
        async for response in responses:
            yield response
        return
    from opentelemetry import trace

    parent = incoming(context.invocation_metadata())
    async for response in responses:
        span = tracer.start_span("xds.push", context=parent, kind=trace.SpanKind.PRODUCER)
        span.set_attributes({
            "meshgate.xds.node": clip(node.id),
            "meshgate.xds.protocol": protocol,
            "meshgate.xds.type": short(response.type_url),
            "meshgate.xds.version": response.system_version_info if protocol == "delta"
            else response.version_info,
            "meshgate.xds.resources": len(response.resources),
            "meshgate.xds.nonce": response.nonce,
        })  # fmt: skip
        try:
            yield response
        finally:
            span.end()
