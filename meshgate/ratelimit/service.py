"""The gRPC face of the rate limiter: protobuf <-> core types, errors -> gRPC status, and the
`Service` the composition root runs (store, config sources, hot reload, health).

Errors are classified where they arise and mapped to a status here only: StoreUnavailable ->
UNAVAILABLE (Envoy's failure_mode_deny decides), InvalidRequest -> INVALID_ARGUMENT (request bytes
that are not a RateLimitRequest too: MalformedRequest, logged at most once a minute, no traceback).
The kept responses are in `_reply.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped,unused-ignore]
from prometheus_client import CollectorRegistry

from .. import contract
from ..clip import clip
from ..policy.model import Policy
from ..policy.store import Commit, Rejection
from ..tracing import genai_usage, incoming
from ._reply import CURRENT_LIMITS, RESPONSES_BUDGET, UNIT_FROM_PB, _Entry, _Replies, to_response
from .audit import PolicyNames, RefusalLog, estimate_charges
from .bounds import MIB, Budget, request_bytes, sizeof
from .compile import compile_policy
from .config import ConfigError, load_config_dir, merge_domains
from .core import Decision, Descriptor, InvalidRequest, Limiter, Request, Settings
from .metrics import RateLimitMetrics
from .model import Node
from .store import Store, StoreFull, StoreUnavailable

if TYPE_CHECKING:
    from ..health import Health

__all__ = ["RateLimitService", "RateLimitServicer", "add_to_server", "to_request", "to_response"]

log = logging.getLogger("meshgate.ratelimit")

SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"
# the servicer's converted requests, by their bytes (see bounds.py); a larger request is converted
# for its call only
REQUESTS_BUDGET, REQUEST_MAX = 32 * MIB, 32 << 10


class MalformedRequest(InvalidRequest):
    """The request's bytes are not a RateLimitRequest."""


class _Throttled:
    """A warning logged at most once per `every` seconds, with the count of those it held back."""

    def __init__(self, every: float) -> None:
        self.every, self.next_at, self.held = every, 0.0, 0

    def warn(self, message: str) -> None:
        now = time.monotonic()
        if now < self.next_at:
            self.held += 1
            return
        held, self.held, self.next_at = self.held, 0, now + self.every
        log.warning("%s%s", message, f" ({held} more like it since the last such line)" if held else "")


_TRACE_ENTRIES = ((contract.TRACE_KEY, ""),)


def _descriptor(d: Any) -> Descriptor:
    limit = None
    if d.HasField("limit") and d.limit.unit in UNIT_FROM_PB:
        limit = (d.limit.requests_per_unit, UNIT_FROM_PB[d.limit.unit])
    hits = d.hits_addend.value if d.HasField("hits_addend") else None
    entries = tuple([(e.key, e.value) for e in d.entries])
    if len(entries) == 1 and entries[0][0] == contract.TRACE_KEY:
        # a stream-end call's trace context (`_carried_trace`), not a quota: no rule matches it, and
        # without its value every call's descriptor is the same one (one cache entry, not one each)
        entries = _TRACE_ENTRIES
    return Descriptor(entries, limit, hits)


def _carried_trace(raw: bytes) -> Any | None:
    """The trace context in a call's `meshgate.traceparent` descriptor: xds adds it to the stream-end
    call when the gateway traces, since Envoy 1.40 sends that call without one (meshgate/contract.py)."""
    if contract.TRACE_KEY.encode() not in raw:  # most calls: no second parse
        return None
    try:
        descriptors = rls_pb2.RateLimitRequest.FromString(raw).descriptors
    except DecodeError:
        return None  # answered INVALID_ARGUMENT by `_answer`
    for d in descriptors:
        if len(d.entries) == 1 and d.entries[0].key == contract.TRACE_KEY:
            return incoming((), {contract.TRACEPARENT_HEADER: d.entries[0].value})
    return None


def to_request(pb: rls_pb2.RateLimitRequest) -> Request:
    """protobuf -> core (the servicer converts a request's bytes once: see RateLimitServicer._entry)."""
    return Request(pb.domain, tuple([_descriptor(d) for d in pb.descriptors]), pb.hits_addend)


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """ShouldRateLimit. `add_to_server` registers `should_rate_limit`: serialized request in, serialized
    response out (no protobuf parse for a request seen before, no serializer call by grpc). The
    generated servicer's `ShouldRateLimit` (messages in and out) remains, for the generated
    `add_RateLimitServiceServicer_to_server`."""

    def __init__(self, limiter: Limiter, metrics: RateLimitMetrics, store_name: str,
                 on_store: StoreHealth | None = None) -> None:
        self.limiter = limiter
        self.metrics = metrics
        self.store_name = store_name
        self.on_store = on_store
        self._requests: dict[bytes, _Entry] = {}  # serialized RateLimitRequest -> its Request, reply
        self._budget = metrics.track(Budget("requests", REQUESTS_BUDGET, entry_max=REQUEST_MAX))
        self._replies = _Replies(metrics.track(Budget("responses", RESPONSES_BUDGET)))
        self.refusals = RefusalLog(metrics)
        self.tracer: Any = None
        """An OpenTelemetry tracer: each call is a span (None: no spans, no cost)."""
        metrics.track(CURRENT_LIMITS)
        self._malformed, self._full = _Throttled(60.0), _Throttled(60.0)

    def _entry(self, raw: bytes) -> _Entry:
        """A request seen before (same bytes) is not parsed and converted again."""
        found = self._requests.get(raw)
        if found is None:
            found = self._convert(raw)
        return found

    def _convert(self, raw: bytes) -> _Entry:
        """Parse and convert; kept by its bytes within the budget. Bytes that are not a RateLimitRequest
        raise MalformedRequest."""
        try:
            request = to_request(rls_pb2.RateLimitRequest.FromString(raw))
        except DecodeError:
            raise MalformedRequest("malformed RateLimitRequest: the bytes are not a valid message") from None
        cost = sizeof(raw) + request_bytes(request.domain, request.descriptors)
        unreported = estimate_charges(request)
        if self._budget.admit(self._requests, cost):
            entry = self._requests[raw] = _Entry(request, unreported)
            return entry
        return _Entry(dataclasses.replace(request, keep=False), unreported)  # this call only: none keeps it

    async def should_rate_limit(self, raw: bytes, context: grpc.aio.ServicerContext[object, object]) -> bytes:
        if self.tracer is not None:
            return await self._traced(raw, context, self.tracer)
        return (await self._answer(raw, context))[0]

    async def _traced(
        self, raw: bytes, context: grpc.aio.ServicerContext[object, object], tracer: Any
    ) -> bytes:
        """The call in a span continuing the caller's trace (Envoy's rate limit call span; at stream
        end, the request's, carried in a descriptor: `_carried_trace`): domain, descriptors, the
        answer, the quota that refused, and the LLM usage a stream-end call charges."""
        from opentelemetry import trace

        parent = incoming(context.invocation_metadata()) or _carried_trace(raw)
        span = tracer.start_span("ratelimit.should_rate_limit", context=parent, kind=trace.SpanKind.SERVER)
        try:
            answer, entry, decision = await self._answer(raw, context)
        except BaseException as exc:  # an abort (its status), or a failure: on the span, then raised
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, str(exc))
            span.end()
            raise
        if span.is_recording():
            refused = [s.name for s in decision.statuses if s.over_limit]
            span.set_attributes({
                "meshgate.ratelimit.domain": clip(entry.request.domain),
                "meshgate.ratelimit.descriptors": len(entry.request.descriptors),
                "meshgate.ratelimit.code": "OVER_LIMIT" if decision.over_limit else "OK",
                "meshgate.quota": refused[0] if refused else "",
                **genai_usage(entry.request.descriptors),
            })  # fmt: skip
        span.end()
        return answer

    async def _answer(
        self, raw: bytes, context: grpc.aio.ServicerContext[object, object]
    ) -> tuple[bytes, _Entry, Decision]:
        started = time.perf_counter()
        try:
            entry = self._entry(raw)
        except InvalidRequest as exc:
            self.metrics.latency.observe(time.perf_counter() - started)
            if isinstance(exc, MalformedRequest):
                self._malformed.warn(f"ratelimit: {exc} ({len(raw)} bytes), answered INVALID_ARGUMENT")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            decision = await self.decide(entry.request, started=started)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StoreFull:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "rate limit store full")
        except StoreUnavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "rate limit store unavailable")
        if entry.unreported:  # estimate charges: counted per quota (audit.py)
            self.refusals.unreported(entry.request, decision, entry.unreported)
        return self._replies.answer(entry, decision), entry, decision

    async def decide(self, request: Request, *, started: float | None = None) -> Decision:
        """One decision as ShouldRateLimit makes it, also for a caller in this process (extauthz's token
        admission, admission.py): the store's health followed, a refusal counted and logged per quota,
        and with `started` (a ShouldRateLimit call's start) its latency observed (an admission's time is
        in extauthz's own check latency). Raises StoreFull and StoreUnavailable (counted), InvalidRequest."""
        try:
            decision = await self.limiter.decide(request)
        except StoreFull as exc:  # not an outage: the store answers, health stays as it is
            self.metrics.store_errors.labels(self.store_name).inc()
            self._full.warn(f"ratelimit: {exc}; new counters answered UNAVAILABLE")
            raise
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels(self.store_name).inc()
            if self.on_store is None or self.on_store.up:  # once per outage, not once per call
                log.warning("ratelimit store unavailable: %s", exc)
            if self.on_store is not None:
                await self.on_store.set(False)
            raise
        finally:
            if started is not None:
                self.metrics.latency.observe(time.perf_counter() - started)
        if self.on_store is not None and not self.on_store.up:
            await self.on_store.set(True)
        if decision.over_limit:  # counted and logged per quota (audit.py)
            self.refusals.refused(request, decision)
        return decision

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> rls_pb2.RateLimitResponse:
        raw = await self.should_rate_limit(request.SerializeToString(), context)
        return rls_pb2.RateLimitResponse.FromString(raw)


def add_to_server(servicer: RateLimitServicer, server: grpc.aio.Server) -> None:
    """RateLimitService/ShouldRateLimit, as the generated add_RateLimitServiceServicer_to_server
    registers it, except that `servicer.should_rate_limit` takes and returns serialized messages (so
    neither a request deserializer nor a response serializer)."""
    handlers = {
        "ShouldRateLimit": grpc.unary_unary_rpc_method_handler(
            servicer.should_rate_limit, request_deserializer=None, response_serializer=None
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class StoreHealth:
    """The "ratelimit_store" health component, published only when it changes."""

    def __init__(self, health: Health) -> None:
        self.health = health
        self.up = True

    async def set(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            await self.health.set("ratelimit_store", up, scope=SERVICE_NAME)


def settings_of(policy: Policy) -> Settings:
    rl = policy.gateway.ratelimit
    return Settings(
        shadow_mode=rl.shadow_mode,
        response_headers=rl.response_headers,
        near_limit_ratio=rl.near_limit_ratio,
        local_cache=rl.local_cache,
    )


class RateLimitService:
    """envoy.service.ratelimit.v3.RateLimitService, fed by the policy and an optional YAML directory.

    Built by the composition root (meshgate/server.py) with everything it uses: the counter store it
    chose (memory or Redis), health, metrics registry and the YAML directory. The root subscribes
    `prepare` to the policy store and feeds `prepare_config_dir` from the reload pipeline; both run in
    the pipeline's worker thread and return the commit that swaps the limiter's config on the loop.
    """

    grpc_names: tuple[str, ...] = (SERVICE_NAME,)

    def __init__(
        self,
        store: Store,
        *,
        store_name: str,
        health: Health,
        registry: CollectorRegistry | None = None,
        config_dir: Path | None = None,
        policy_source: str = "policy",
        probe_interval: float = 1.0,
        tracer_provider: Any = None,
    ) -> None:
        self.store = store
        self.config_dir = config_dir
        self.policy_source = policy_source
        self.probe_interval = probe_interval
        self.metrics = RateLimitMetrics(registry)
        self._health = health
        self.health = StoreHealth(health)
        self.limiter = Limiter(store, metrics=self.metrics)
        self.servicer = RateLimitServicer(self.limiter, self.metrics, store_name, self.health)
        if tracer_provider is not None:
            self.servicer.tracer = tracer_provider.get_tracer("meshgate.ratelimit")
        self._dir_domains: Mapping[str, tuple[str, Node]] = {}
        self._policy_domain: Mapping[str, tuple[str, Node]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.last_rejected: Rejection | None = None
        """The last YAML directory refused since start (`meshgate status`)."""

    async def start(self) -> None:
        await self._health.set("ratelimit_config", True, scope=SERVICE_NAME)
        await self._health.set("ratelimit_store", True, scope=SERVICE_NAME)
        self._tasks.append(asyncio.create_task(self._probe(self.store)))

    def add_to_server(self, server: grpc.aio.Server) -> None:
        add_to_server(self.servicer, server)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.servicer.refusals.flush()
        await self.limiter.store.close()

    # config sources (prepared in the reload pipeline's worker thread, committed on the loop) --------
    def prepare(self, policy: Policy) -> Commit:
        """PolicyStore's first phase: compile (may raise); the returned commit swaps it in."""
        domain, tree = compile_policy(policy)
        policy_domain = {domain: (f"{self.policy_source} (gateway.ratelimit.domain)", tree)}
        config = merge_domains(policy_domain, self._dir_domains)
        settings = settings_of(policy)
        names = PolicyNames(
            quotas=frozenset(q.name for q in policy.quotas),
            tenants=frozenset(t.name for t in policy.tenants),
            models=frozenset(m.name for m in policy.models),
        )

        def commit() -> None:
            self._policy_domain = policy_domain
            self.limiter.config, self.limiter.settings = config, settings
            self.servicer.refusals.names = names

        return commit

    def load_config_dir(self) -> None:
        """Read the YAML directory at start, before the first policy: a bad one raises ConfigError."""
        self._dir_domains = self._load_dir()

    def prepare_config_dir(self) -> Commit | None:
        """Read the YAML directory again: the commit that makes it live, or None when it is refused
        (logged and counted; the live config stays)."""
        try:
            domains = self._load_dir()
            config = merge_domains(self._policy_domain, domains)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("ratelimit config rejected, keeping the live one: %s", issue)
            errors = tuple(str(issue) for issue in exc.issues)
            self.last_rejected = Rejection(time.time(), "ratelimit-config", "invalid", errors)
            return None

        def commit() -> None:
            self._dir_domains = domains
            self.limiter.config = config
            log.info("ratelimit config live from %s", ", ".join(config.sources))

        return commit

    def reload_dir(self) -> bool:
        """Re-read the YAML directory and apply it now (tests; `meshgate serve` uses the pipeline)."""
        commit = self.prepare_config_dir()
        if commit is not None:
            commit()
        return commit is not None

    def _load_dir(self) -> Mapping[str, tuple[str, Node]]:
        if self.config_dir is None:
            return {}
        try:
            domains = load_config_dir(self.config_dir)
        except ConfigError:
            self.metrics.config_loads.labels("invalid").inc()
            raise
        self.metrics.config_loads.labels("ok").inc()
        return domains

    async def _probe(self, store: Store) -> None:
        """Keep "ratelimit_store" honest without traffic: ping every `probe_interval` seconds."""
        while True:
            try:
                await store.ping()
                await self.health.set(True)
            except StoreUnavailable as exc:
                if self.health.up:
                    log.warning("ratelimit store unavailable: %s", exc)
                await self.health.set(False)
            await asyncio.sleep(self.probe_interval)
