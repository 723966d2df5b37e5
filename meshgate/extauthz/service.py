"""The grpc.aio Authorization service: converts, calls the core, observes. No decision logic here.

Per check: one OpenTelemetry span (continuing the request's traceparent), one counter increment by
decision/code/tenant, one latency observation, one audit log line (never a token or a key).
Internal failures become gRPC UNAVAILABLE so Envoy's failure mode decides; nothing fails open here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..policy.model import Issuer, Policy
from ..policy.store import Commit, PolicyStore
from .audit import AuditLog
from .core import Authorizer
from .jwks import JwksRefresher, RemoteKeys
from .request import CheckInput, Decision, Unavailable
from .responses import HEADER_PREFIX, add_decision_id, to_check_input, to_response
from .table import compile_table

__all__ = ["ExtAuthzService"]

log = logging.getLogger("meshgate.extauthz")
_PROPAGATOR = TraceContextTextMapPropagator()
_UNKNOWN = "unknown"
_MEMO_ENTRIES = 10000


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.decisions = Counter(
            "meshgate_extauthz_decisions",
            "Check decisions by decision (allow, deny), code and tenant.",
            ["decision", "code", "tenant"],
            registry=registry,
        )
        self.errors = Counter(
            "meshgate_extauthz_unavailable",
            "Checks answered UNAVAILABLE (no decision possible).",
            ["reason"],
            registry=registry,
        )
        self.latency = Histogram(
            "meshgate_extauthz_check_seconds",
            "Time to decide one check, by decision cache result.",
            ["cache"],
            registry=registry,
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
        )
        self.latency_hit = self.latency.labels("hit")
        self.latency_miss = self.latency.labels("miss")
        self.tenants: frozenset[str] = frozenset()
        self._children: dict[tuple[str, str, str], Any] = {}

    def set_tenants(self, tenants: frozenset[str]) -> None:
        self.tenants = tenants
        self._children.clear()

    def count(self, decision: Decision, tenant: str) -> None:
        """decisions{decision, code, tenant}; tenants outside the policy count as "unknown"."""
        key = ("allow" if decision.allowed else "deny", decision.code, tenant)
        child = self._children.get(key)
        if child is None:
            label = tenant if tenant in self.tenants else _UNKNOWN
            child = self._children[key] = self.decisions.labels(key[0], key[1], label)
            if len(self._children) > 10000:  # tenants outside the policy: keep the memo bounded
                self._children.clear()
        child.inc()


class ExtAuthzService:
    """envoy.service.auth.v3.Authorization, following the live policy of `store`."""

    grpc_names: tuple[str, ...] = ("envoy.service.auth.v3.Authorization",)

    def __init__(
        self,
        store: PolicyStore,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        refresher: JwksRefresher | None = None,
        initial_keys_timeout: float = 5.0,
    ) -> None:
        self._authorizer: Authorizer | None = None
        self._refresher = refresher or JwksRefresher(registry=registry)
        self._refresher.on_change = self._keys_changed
        self._metrics = _Metrics(registry)
        self._tracer = trace.get_tracer("meshgate.extauthz", tracer_provider=tracer_provider)
        self._initial_keys_timeout = initial_keys_timeout
        self._task: asyncio.Task[None] | None = None
        self._memo: dict[tuple[int, tuple[str, ...]], tuple[Decision, external_auth_pb2.CheckResponse]] = {}
        self._id_prefix = secrets.token_hex(6) + "-"
        self._ids = itertools.count(1)
        self._audit = AuditLog()
        store.subscribe("extauthz", self.prepare)

    # --- policy ---------------------------------------------------------------------------------
    def prepare(self, policy: Policy) -> Commit:
        """Compile the AuthzTable (may raise: the policy is then refused); commit swaps it in."""
        remote: list[RemoteKeys] = []

        def remote_keys(issuer: Issuer) -> RemoteKeys:
            source = self._refresher.source_for(issuer)
            remote.append(source)
            return source

        authorizer = Authorizer(compile_table(policy, remote_keys=remote_keys))

        def commit() -> None:
            self._authorizer = authorizer  # a new Authorizer: the decision cache starts empty
            self._refresher.sync(remote)
            self._metrics.set_tenants(frozenset(authorizer.table.tenants))
            self._memo.clear()

        return commit

    def _keys_changed(self) -> None:
        if self._authorizer is not None:
            self._authorizer.cache.clear()

    # --- Service protocol -----------------------------------------------------------------------
    def add_to_server(self, server: grpc.aio.Server) -> None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_Servicer(self), server)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._refresher.run(), name="extauthz-jwks")
        if self._refresher.sources:
            await self._refresher.wait_loaded(self._initial_keys_timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._audit.flush()

    # --- one check ------------------------------------------------------------------------------
    def check(self, request: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
        """Decide one CheckRequest. Raises Unavailable when no decision can be made."""
        started = time.perf_counter()
        req = to_check_input(request)
        context = _PROPAGATOR.extract(carrier=req.headers) if "traceparent" in req.headers else None
        span = self._tracer.start_span("extauthz.check", context=context, kind=trace.SpanKind.SERVER)
        try:
            authorizer = self._authorizer
            if authorizer is None:
                raise Unavailable("no policy loaded")
            decision, cached = authorizer.decide(req)
            decision_id = f"{self._id_prefix}{next(self._ids):x}"
            response = self._respond(authorizer, decision, req, decision_id)
            self._observe(span, decision, req, decision_id=decision_id, cached=cached, started=started)
        finally:
            span.end()
        return response

    def unavailable(self, reason: str) -> None:
        """Count a check answered UNAVAILABLE (reason: unavailable, internal)."""
        self._metrics.errors.labels(reason).inc()

    def _respond(
        self, authorizer: Authorizer, decision: Decision, req: CheckInput, decision_id: str
    ) -> external_auth_pb2.CheckResponse:
        """The response for `decision`. A cached decision reuses the response built for it before (keyed
        by the decision object and the client's x-meshgate-* header names): only the decision id changes."""
        client_headers = tuple(name for name in req.headers if name.startswith(HEADER_PREFIX))
        key = (id(decision), client_headers)
        memo = self._memo.get(key)
        if memo is None or memo[0] is not decision:
            auth = authorizer.table.auth
            template = to_response(
                decision,
                client_headers=client_headers,
                api_key_header=auth.api_key_header,
                forward_authorization=auth.forward_authorization,
            )
            if len(self._memo) >= _MEMO_ENTRIES:
                self._memo.clear()
            memo = self._memo[key] = (decision, template)
        response = external_auth_pb2.CheckResponse()
        response.CopyFrom(memo[1])
        add_decision_id(response, decision_id)
        return response

    def _observe(
        self,
        span: trace.Span,
        decision: Decision,
        req: CheckInput,
        *,
        decision_id: str,
        cached: bool,
        started: float,
    ) -> None:
        who, target = decision.identity, decision.target
        tenant = who.tenant if who is not None else ""
        self._metrics.count(decision, tenant)
        latency = self._metrics.latency_hit if cached else self._metrics.latency_miss
        latency.observe(time.perf_counter() - started)
        if span.is_recording():
            span.set_attributes(
                {
                    "meshgate.decision": "allow" if decision.allowed else "deny",
                    "meshgate.code": decision.code,
                    "meshgate.tenant": tenant,
                    "meshgate.model": target.model if target is not None else "",
                    "meshgate.decision_id": decision_id,
                    "meshgate.cache_hit": cached,
                    "http.request.method": req.method,
                }
            )
        self._audit.record(decision, req, decision_id=decision_id, cached=cached)


class _Servicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, service: ExtAuthzService) -> None:
        self._service = service

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> external_auth_pb2.CheckResponse:
        try:
            return self._service.check(request)
        except Unavailable as exc:
            reason, detail = "unavailable", str(exc)
            log.warning("check not decided: %s", exc)
        except Exception:
            reason, detail = "internal", "internal error"
            log.exception("check failed")
        self._service.unavailable(reason)
        await context.abort(grpc.StatusCode.UNAVAILABLE, detail)
        raise AssertionError("unreachable: abort raises")
