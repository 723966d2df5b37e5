"""The gRPC face of the rate limiter: protobuf <-> core types, errors -> gRPC status, and the
`Service` the composition root runs (store, config sources, hot reload, health).

Errors are classified where they arise and mapped to a status here only: StoreUnavailable ->
UNAVAILABLE (Envoy's failure_mode_deny decides), InvalidRequest -> INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client import CollectorRegistry

from ..policy.model import Policy
from ..policy.store import Commit
from .compile import compile_policy
from .config import ConfigError, load_config_dir, merge_domains
from .core import Decision, Descriptor, InvalidRequest, Limiter, Request, Settings, limit_header
from .metrics import RateLimitMetrics
from .model import Node, Unit
from .store import Store, StoreUnavailable

if TYPE_CHECKING:
    from ..health import Health

__all__ = ["RateLimitService", "RateLimitServicer", "add_to_server", "to_request", "to_response"]

log = logging.getLogger("meshgate.ratelimit")

SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"
_Code = rls_pb2.RateLimitResponse.Code
_PbRateLimit = rls_pb2.RateLimitResponse.RateLimit
_PbUnit = _PbRateLimit.Unit
_OK: int = _Code.OK  # plain ints: enum attribute lookups are slow on the hot path
_OVER_LIMIT: int = _Code.OVER_LIMIT
_UNIT_FROM_PB: dict[int, Unit] = {
    _PbUnit.SECOND: "second", _PbUnit.MINUTE: "minute", _PbUnit.HOUR: "hour", _PbUnit.DAY: "day",
    _PbUnit.WEEK: "week", _PbUnit.MONTH: "month", _PbUnit.YEAR: "year",
}
_UNIT_TO_PB = {name: value for value, name in _UNIT_FROM_PB.items()}
_CACHE_MAX = 50_000
_REPLIES_MAX = 10_000
_REBUILD_AFTER = 4096  # header value sets before a kept response is built afresh (see _Reply)


def _descriptor(d: Any) -> Descriptor:
    limit = None
    if d.HasField("limit") and d.limit.unit in _UNIT_FROM_PB:
        limit = (d.limit.requests_per_unit, _UNIT_FROM_PB[d.limit.unit])
    hits = d.hits_addend.value if d.HasField("hits_addend") else None
    return Descriptor(tuple([(e.key, e.value) for e in d.entries]), limit, hits)


def to_request(pb: rls_pb2.RateLimitRequest) -> Request:
    """protobuf -> core (the servicer converts a request's bytes once: see RateLimitServicer._entry)."""
    return Request(pb.domain, tuple([_descriptor(d) for d in pb.descriptors]), pb.hits_addend)


@functools.lru_cache(maxsize=1024)
def _current_limit(requests_per_unit: int, unit: Unit) -> rls_pb2.RateLimitResponse.RateLimit:
    """The `current_limit` message of a (limit, unit): built once, copied into each status."""
    return _PbRateLimit(requests_per_unit=requests_per_unit, unit=_UNIT_TO_PB[unit])


def to_response(decision: Decision) -> rls_pb2.RateLimitResponse:
    response = rls_pb2.RateLimitResponse(overall_code=_OVER_LIMIT if decision.over_limit else _OK)
    statuses = response.statuses
    for s in decision.statuses:
        code = _OVER_LIMIT if s.over_limit else _OK
        if s.limit is None or s.unit is None:
            statuses.add(code=code)
            continue
        status = statuses.add(
            code=code, current_limit=_current_limit(s.limit, s.unit), limit_remaining=s.remaining
        )
        status.duration_until_reset.seconds = s.reset
    headers = response.response_headers_to_add
    for name, value in decision.headers:
        headers.add(key=name, value=value)
    return response


class _Reply:
    """A response built once by `to_response` and then updated in place for each decision of an equal
    shape (see Decision.shape), whichever request it answers: setting a few fields of a kept message
    costs a fraction of building it again, and requests of one form (say, every user's request with
    the same quotas) share one message. A field is set only when its value differs from the one the
    message holds (codes and resets rarely change from one call to the next; a upb field set costs more
    than the comparison). Filled and serialized with no await in between.

    upb copies a string set on a message into the message's arena, which is freed only with the
    message: each header value set would grow a kept message by its length for as long as the process
    runs. So after `_REBUILD_AFTER` header value sets the message is built afresh (and the old one
    freed): it holds at most a few tens of KiB of superseded values."""

    __slots__ = ("headers", "held", "limited", "message", "overall", "sets", "shape", "style")

    def __init__(self, decision: Decision) -> None:
        self._build(decision)

    def _build(self, decision: Decision) -> None:
        self.shape, self.style = decision.shape, decision.style
        self.message = to_response(decision)
        self.overall = self.message.overall_code
        statuses = self.message.statuses
        # per status carrying a limit: its index, its message, its duration, and [code, reset] as set
        self.limited = [
            (i, statuses[i], statuses[i].duration_until_reset, [statuses[i].code, s.reset])
            for i, s in enumerate(decision.statuses) if s.limit is not None
        ]
        # the limit, remaining and reset header messages (none, or all three: fixed by the shape), and
        # the worst status's [limit, unit, remaining, reset] their values were made from
        self.headers = list(self.message.response_headers_to_add)
        worst = decision.worst
        self.held = [worst.limit, worst.unit, worst.remaining, worst.reset] if worst is not None else []
        self.sets = 0  # header values set since the message was built

    def fill(self, decision: Decision) -> bytes:
        if self.sets >= _REBUILD_AFTER:  # a fresh arena (see the class doc)
            self._build(decision)
            return bytes(self.message.SerializeToString())
        message = self.message
        overall = _OVER_LIMIT if decision.over_limit else _OK
        if overall != self.overall:
            message.overall_code = self.overall = overall
        statuses = decision.statuses
        for i, status, duration, held in self.limited:
            s = statuses[i]
            code = _OVER_LIMIT if s.over_limit else _OK
            if code != held[0]:
                status.code = held[0] = code
            status.limit_remaining = s.remaining
            if s.reset != held[1]:
                duration.seconds = held[1] = s.reset
        if self.headers:  # values made from numbers, and only when a number changed
            worst, held = decision.worst, self.held
            assert worst is not None and worst.limit is not None and worst.unit is not None  # the shape's
            if worst.remaining != held[2]:
                self.headers[1].value = str(worst.remaining)
                held[2] = worst.remaining
                self.sets += 1
            if worst.reset != held[3]:
                self.headers[2].value = str(worst.reset)
                held[3] = worst.reset
                self.sets += 1
            if worst.limit != held[0] or worst.unit != held[1]:  # another descriptor is the worst now
                self.headers[0].value = limit_header(self.style, worst.limit, worst.unit)
                held[0], held[1] = worst.limit, worst.unit
                self.sets += 1
        return bytes(message.SerializeToString())


class _Entry:
    """What the servicer keeps per serialized request: the request, and the reply it last used."""

    __slots__ = ("reply", "request")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.reply: _Reply | None = None


class _Replies:
    """The kept responses, one per decision shape."""

    def __init__(self) -> None:
        self._by_shape: dict[object, _Reply] = {}

    def answer(self, entry: _Entry, decision: Decision) -> bytes:
        reply = entry.reply
        if reply is None or reply.shape is not decision.shape:
            shape = decision.shape
            if shape is None:
                return bytes(to_response(decision).SerializeToString())
            reply = self._by_shape.get(shape)
            if reply is None:
                if len(self._by_shape) >= _REPLIES_MAX:
                    self._by_shape.clear()
                reply = self._by_shape[shape] = _Reply(decision)
            reply.shape = shape  # an equal shape from a newer config: the next call matches at once
            entry.reply = reply
        return reply.fill(decision)


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
        self._replies = _Replies()

    def _entry(self, raw: bytes) -> _Entry:
        """A request seen before (same bytes) is not parsed and converted again. A malformed one raises
        DecodeError, which grpc answers as it answers its own deserializer failing."""
        found = self._requests.get(raw)
        if found is None:
            if len(self._requests) >= _CACHE_MAX:
                self._requests.clear()
            found = self._requests[raw] = _Entry(to_request(rls_pb2.RateLimitRequest.FromString(raw)))
        return found

    async def should_rate_limit(self, raw: bytes, context: grpc.aio.ServicerContext[object, object]) -> bytes:
        started = time.perf_counter()
        entry = self._entry(raw)
        try:
            decision = await self.limiter.decide(entry.request)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels(self.store_name).inc()
            if self.on_store is None or self.on_store.up:  # once per outage, not once per call
                log.warning("ratelimit store unavailable: %s", exc)
            if self.on_store is not None:
                await self.on_store.set(False)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "rate limit store unavailable")
        finally:
            self.metrics.latency.observe(time.perf_counter() - started)
        if self.on_store is not None and not self.on_store.up:
            await self.on_store.set(True)
        return self._replies.answer(entry, decision)

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
        self._dir_domains: Mapping[str, tuple[str, Node]] = {}
        self._policy_domain: Mapping[str, tuple[str, Node]] = {}
        self._tasks: list[asyncio.Task[None]] = []

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
        await self.limiter.store.close()

    # config sources (prepared in the reload pipeline's worker thread, committed on the loop) --------
    def prepare(self, policy: Policy) -> Commit:
        """PolicyStore's first phase: compile (may raise); the returned commit swaps it in."""
        domain, tree = compile_policy(policy)
        policy_domain = {domain: (f"{self.policy_source} (gateway.ratelimit.domain)", tree)}
        config = merge_domains(policy_domain, self._dir_domains)
        settings = settings_of(policy)

        def commit() -> None:
            self._policy_domain = policy_domain
            self.limiter.config, self.limiter.settings = config, settings

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
