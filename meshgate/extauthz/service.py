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

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry

from ..policy.model import Issuer, Policy
from ..policy.store import Commit, PolicyStore
from .audit import AuditLog
from .core import Authorizer
from .jwks import JwksRefresher, RemoteKeys
from .metrics import CheckMetrics
from .request import CheckInput, Decision, Unavailable
from .responses import HEADER_PREFIX, WireTemplate, add_decision_id, to_check_input, to_response
from .table import compile_table

__all__ = ["ExtAuthzService"]

log = logging.getLogger("meshgate.extauthz")
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACER_NAME = "meshgate.extauthz"
_PROVIDER_RECHECK_S = 1.0
_MEMO_ENTRIES = 10000
_ID_DIGITS = 12  # fixed width: a cached response has a hole of one size for the id (2**48 checks)
_GRPC_SERVICE = "envoy.service.auth.v3.Authorization"


class ExtAuthzService:
    """envoy.service.auth.v3.Authorization, following the live policy of `store`."""

    grpc_names: tuple[str, ...] = (_GRPC_SERVICE,)

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
        self._metrics = CheckMetrics(registry)
        self._tracer = tracer_provider.get_tracer(_TRACER_NAME) if tracer_provider is not None else None
        self._next_provider_check = 0.0
        self._initial_keys_timeout = initial_keys_timeout
        self._task: asyncio.Task[None] | None = None
        self._memo: dict[tuple[int, tuple[str, ...]], tuple[Decision, WireTemplate]] = {}
        self._id_prefix = secrets.token_hex(6) + "-"  # then the check's number: _ID_DIGITS hex digits
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
            self._metrics.tenants = frozenset(authorizer.table.tenants)
            self._memo.clear()

        return commit

    def _keys_changed(self) -> None:
        if self._authorizer is not None:
            self._authorizer.cache.clear()

    # --- Service protocol -----------------------------------------------------------------------
    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Authorization/Check, as the generated add_AuthorizationServicer_to_server registers it, except
        that `check` hands back the CheckResponse already serialized (so no response serializer)."""
        handlers = {
            "Check": grpc.unary_unary_rpc_method_handler(
                _Servicer(self).Check,
                request_deserializer=external_auth_pb2.CheckRequest.FromString,
                response_serializer=None,
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_GRPC_SERVICE, handlers),))
        server.add_registered_method_handlers(_GRPC_SERVICE, handlers)

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
    def check(self, request: external_auth_pb2.CheckRequest) -> bytes:
        """Decide one CheckRequest: the serialized CheckResponse. Raises Unavailable when no decision
        can be made."""
        started = time.perf_counter()
        req = to_check_input(request)
        tracer = self._current_tracer(started)
        span = None
        if tracer is not None:
            context = _PROPAGATOR.extract(carrier=req.headers) if "traceparent" in req.headers else None
            span = tracer.start_span("extauthz.check", context=context, kind=trace.SpanKind.SERVER)
        try:
            authorizer = self._authorizer
            if authorizer is None:
                raise Unavailable("no policy loaded")
            decision, cached = authorizer.decide(req)
            decision_id = f"{self._id_prefix}{next(self._ids):0{_ID_DIGITS}x}"
            response = self._respond(authorizer, decision, req, decision_id, cached=cached)
            self._observe(span, decision, req, decision_id=decision_id, cached=cached, started=started)
        finally:
            if span is not None:
                span.end()
        return response

    def _current_tracer(self, now: float) -> trace.Tracer | None:
        """The tracer of the provider passed in, else of the process's global provider once one is set.
        None while there is none: the API's stand-in would only make a non-recording span that nothing
        reads, so a check makes no span at all. Asking for the global provider reads os.environ (more
        than a cached decision costs), so it is asked at most once a second until one is set."""
        if self._tracer is None:
            if now < self._next_provider_check:
                return None
            self._next_provider_check = now + _PROVIDER_RECHECK_S
            provider = trace.get_tracer_provider()
            if isinstance(provider, trace.ProxyTracerProvider):  # none set yet
                return None
            self._tracer = provider.get_tracer(_TRACER_NAME)  # a global provider, once set, stays
        return self._tracer

    def unavailable(self, reason: str) -> None:
        """Count a check answered UNAVAILABLE (reason: unavailable, internal)."""
        self._metrics.errors.labels(reason).inc()

    def _respond(
        self, authorizer: Authorizer, decision: Decision, req: CheckInput, decision_id: str, *, cached: bool
    ) -> bytes:
        """The serialized response for `decision`. A decision served from the cache reuses the response
        built for it before (keyed by the decision object and the client's x-meshgate-* header names): only
        the id changes. A decision made now (a new token, a 401) is built and serialized once."""
        client_headers = tuple([name for name in req.headers if name.startswith(HEADER_PREFIX)])
        if not cached:
            response = self._build(authorizer, decision, client_headers)
            add_decision_id(response, decision_id)
            return bytes(response.SerializeToString())
        key = (id(decision), client_headers)
        memo = self._memo.get(key)
        if memo is None or memo[0] is not decision:
            template = WireTemplate.build(
                self._build(authorizer, decision, client_headers), width=len(decision_id)
            )
            if len(self._memo) >= _MEMO_ENTRIES:
                self._memo.clear()
            memo = self._memo[key] = (decision, template)
        return memo[1].render(decision_id)

    @staticmethod
    def _build(
        authorizer: Authorizer, decision: Decision, client_headers: tuple[str, ...]
    ) -> external_auth_pb2.CheckResponse:
        auth = authorizer.table.auth
        return to_response(
            decision,
            client_headers=client_headers,
            api_key_header=auth.api_key_header,
            forward_authorization=auth.forward_authorization,
        )

    def _observe(
        self,
        span: trace.Span | None,
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
        self._metrics.observe(time.perf_counter() - started, cached=cached)
        if span is not None and span.is_recording():
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


class _Servicer:
    """Authorization's one method, registered by ExtAuthzService.add_to_server."""

    def __init__(self, service: ExtAuthzService) -> None:
        self._service = service

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> bytes:
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
