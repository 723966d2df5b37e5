"""The grpc.aio Authorization service: converts, calls the core, observes. No decision logic here.

Per check: one OpenTelemetry span (continuing the request's traceparent), one counter increment by
decision/code/tenant, one latency observation, one audit log line (never a token or a key).
Internal failures become gRPC UNAVAILABLE so Envoy's failure mode decides; nothing fails open here.
A request that is not a CheckRequest is INVALID_ARGUMENT. Logs a client can cause at will are
rate-limited (bounds.LogLimiter). With `health`, the component "extauthz_keys" (scoped to this service's
name) says whether any issuer has keys (docs/extauthz.md, "Health").
A long prompt its model's tokenizer counts is counted off the event loop (counting.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from ..policy.model import Issuer, Policy
from ..policy.store import Commit, PolicyStore
from ..tracing import genai_request, incoming
from .answers import Answers, Form, check_response
from .audit import AuditLog
from .bounds import LogLimiter, clip
from .core import Authorizer, Counting
from .counting import PromptCounters
from .jwks import JwksRefresher, RemoteKeys
from .metrics import CheckMetrics
from .request import CheckInput, Decision, Unavailable
from .responses import HEADER_PREFIX, add_decision_id, to_check_input
from .servicer import Servicer
from .step import Step, admit, admits, with_admission
from .table import AuthzTable, compile_table
from .target import OPENAI_PREFIXES, PATHS

if TYPE_CHECKING:
    from ..ratelimit.admission import Admission

__all__ = ["KEYS_COMPONENT", "ExtAuthzService", "HealthComponents"]

log = logging.getLogger("meshgate.extauthz")
_TRACER_NAME = "meshgate.extauthz"
_PROVIDER_RECHECK_S = 1.0
_ID_DIGITS = 12  # fixed width: a cached response has a hole of one size for the id (2**48 checks)
_GRPC_SERVICE = "envoy.service.auth.v3.Authorization"
KEYS_COMPONENT = "extauthz_keys"


class HealthComponents(Protocol):
    """What the service needs of meshgate.health.Health: to set one named component."""

    async def set(self, component: str, up: bool, *, scope: str = "") -> None: ...


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
        health: HealthComponents | None = None,
    ) -> None:
        self._authorizer: Authorizer | None = None
        self._refresher = refresher or JwksRefresher(registry=registry)
        self._refresher.on_change = self._keys_changed
        self._refresher.on_progress = self._update_keys_health
        self._health = health
        self._keys_up: bool | None = None  # as last published
        self._health_tasks: set[asyncio.Task[None]] = set()
        self._answers = Answers()
        self._metrics = CheckMetrics(registry, caches=self.cache_bytes)
        self._not_decided = LogLimiter(log)
        self._failed = LogLimiter(log)
        self._malformed = LogLimiter(log)
        self._tracer = tracer_provider.get_tracer(_TRACER_NAME) if tracer_provider is not None else None
        self._next_provider_check = 0.0
        self._initial_keys_timeout = initial_keys_timeout
        self._task: asyncio.Task[None] | None = None
        self._id_prefix = secrets.token_hex(6) + "-"  # then the check's number: _ID_DIGITS hex digits
        self._ids = itertools.count(1)
        self._audit = AuditLog()
        self._counters = PromptCounters()
        self.admission: Admission | None = None
        """The token admission (gateway.ratelimit.admission: extauthz), when the composition root gives
        this service the rate limiter of its process (meshgate/server.py)."""
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
        admission = self.admission
        plan = admission.prepare(policy) if admission is not None else None

        def commit() -> None:
            if admission is not None and plan is not None:
                admission.plan = plan
            self._authorizer = authorizer  # a new Authorizer: the decision cache starts empty
            self._refresher.sync(remote)
            self._metrics.tenants = frozenset(authorizer.table.tenants)
            self._metrics.models = frozenset(authorizer.table.models)
            self._answers.clear()
            self._update_keys_health()

        return commit

    def _keys_changed(self) -> None:
        if self._authorizer is not None:
            self._authorizer.cache.clear()

    def cache_bytes(self) -> dict[str, tuple[int, int]]:
        """Each cache's (bytes held, byte budget), for the metrics."""
        authorizer = self._authorizer
        decisions = (authorizer.cache.bytes, authorizer.cache.max_bytes) if authorizer else (0, 0)
        return {
            "decision": decisions,
            "response": self._answers.memo_bytes,
            "path": (PATHS.bytes, PATHS.max_bytes),
        }

    # --- health ---------------------------------------------------------------------------------
    def keys_up(self) -> bool:
        """False while the policy names issuers and not one of them has keys (inline, a shared secret, or
        fetched at least once): no JWT can be decided at all. One issuer with keys is enough, so one
        tenant's unreachable IdP does not take extauthz out for the others."""
        authorizer = self._authorizer
        return authorizer is None or _any_issuer_keys(authorizer.table)

    def _update_keys_health(self) -> None:
        """Publish "extauthz_keys" when it changes (from the event loop; start() publishes the first)."""
        if self._health is None or self._keys_up is None:
            return
        up = self.keys_up()
        if up == self._keys_up:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a commit outside the loop: the next fetch publishes it
            return
        self._keys_up = up
        task = loop.create_task(self._health.set(KEYS_COMPONENT, up, scope=_GRPC_SERVICE))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    # --- Service protocol -----------------------------------------------------------------------
    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Authorization/Check, as the generated add_AuthorizationServicer_to_server registers it, except
        that `check` hands back the CheckResponse already serialized (so no response serializer) and the
        request is parsed by the servicer (a malformed one is INVALID_ARGUMENT, not grpc's UNKNOWN)."""
        handlers = {
            "Check": grpc.unary_unary_rpc_method_handler(
                Servicer(self).Check, request_deserializer=None, response_serializer=None
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_GRPC_SERVICE, handlers),))
        server.add_registered_method_handlers(_GRPC_SERVICE, handlers)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._refresher.run(), name="extauthz-jwks")
        if self._refresher.sources:
            await self._refresher.wait_loaded(self._initial_keys_timeout)
        if self._health is not None:
            self._keys_up = up = self.keys_up()
            await self._health.set(KEYS_COMPONENT, up, scope=_GRPC_SERVICE)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._health_tasks):
            task.cancel()
        self._counters.close()
        self._audit.flush()

    # --- one check ------------------------------------------------------------------------------
    async def check_async(self, request: external_auth_pb2.CheckRequest, call: Any = None) -> bytes:
        """`check` as the servicer runs it: a long prompt is counted by its model's tokenizer in a
        thread (counting.py), while the event loop answers other Checks; with the token admission in
        the Check (gateway.ratelimit.admission: extauthz), the token quotas are checked too."""
        wire: bytes = await self._check(self._begin(to_check_input(request), call), form=Form.GRPC)
        return wire

    async def check_http(self, req: CheckInput) -> bytes:
        """Decide one request that came over HTTP (meshgate/extauthz/http.py), as `check_async` does:
        the HTTP/1.1 answer (`http.to_http`; a cached decision's from its template, as over gRPC)."""
        answer: bytes = await self._check(self._begin(req, None), form=Form.http(req))
        return answer

    async def check_message(self, req: CheckInput) -> external_auth_pb2.CheckResponse:
        """Decide one request as `check_http` does: the CheckResponse message (tests, explain)."""
        message: external_auth_pb2.CheckResponse = await self._check(self._begin(req, None), form=None)
        return message

    def check(self, request: external_auth_pb2.CheckRequest, call: Any = None) -> bytes:
        """Decide one CheckRequest: the serialized CheckResponse. Raises Unavailable when no decision
        can be made. `call` (the gRPC call's context): its metadata's trace context is the span's
        parent (Envoy's ext_authz call span), else the request headers' traceparent. A prompt is
        counted inline (`check_async` is what the servicer calls; the decision is the same), and no
        token admission is made (`meshgate explain` and the tests decide authorization only)."""
        step = self._begin(to_check_input(request), call)
        try:
            if step.counting is not None:
                step.decide(step.counting.count())
            wire: bytes = self._answer(step, form=Form.GRPC)
            return wire
        finally:
            step.end()

    async def _check(self, step: Step, *, form: Form | None) -> Any:
        try:
            if step.counting is not None:
                step.decide(await self._counters.count(step.counting))
            admission = self.admission
            decision = step.decision
            if admission is not None and decision is not None and admits(admission, decision):
                openai = step.req.path.startswith(OPENAI_PREFIXES)
                step.admitted = await admit(admission, decision, openai=openai)
            return self._answer(step, form=form)
        finally:
            step.end()

    def _begin(self, req: CheckInput, call: Any) -> Step:
        """The decision, or the count its prompt waits for; its span open (Step.end closes it)."""
        started = time.perf_counter()
        tracer = self._current_tracer(started)
        span = None
        if tracer is not None:
            context = incoming(call.invocation_metadata() if call is not None else None, req.headers)
            span = tracer.start_span("extauthz.check", context=context, kind=trace.SpanKind.SERVER)
        authorizer = self._authorizer
        if authorizer is None:
            if span is not None:
                span.end()
            raise Unavailable("no policy loaded")
        step = Step(started, req, span, authorizer)
        try:
            begun = authorizer.begin(req)
        except BaseException:
            step.end()
            raise
        if isinstance(begun, Counting):
            step.counting = begun
        else:
            step.decision, step.cached = begun
        return step

    def _answer(self, step: Step, *, form: Form | None) -> Any:
        """The answer's bytes in `form`, else (None) the CheckResponse message."""
        decision, req = step.decision, step.req
        assert decision is not None
        decision_id = f"{self._id_prefix}{next(self._ids):0{_ID_DIGITS}x}"
        if form is not None and step.admitted is None:
            response: Any = self._answers.encoded(
                step.authorizer, decision, req, decision_id, cached=step.cached, form=form
            )
        else:
            client_headers = tuple([name for name in req.headers if name.startswith(HEADER_PREFIX)])
            openai = req.path.startswith(OPENAI_PREFIXES)
            response = check_response(step.authorizer.table, decision, client_headers, openai=openai)
            response = with_admission(response, step.admitted)
            add_decision_id(response, decision_id)
            if form is not None:
                response = form.encode(response)
        self._observe(
            step.span, decision, req, decision_id=decision_id, cached=step.cached, started=step.started
        )
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

    def unavailable(self, reason: str, exc: Exception) -> None:
        """Count (and log, at a bounded rate) a check answered UNAVAILABLE (reason: unavailable, internal)."""
        self._metrics.errors.labels(reason).inc()
        if reason == "unavailable":
            self._not_decided.log(logging.WARNING, "check not decided: %s", exc)
        else:
            self._failed.log(logging.ERROR, "check failed", exc_info=exc)

    def malformed(self, exc: DecodeError, peer: str) -> None:
        """Count (and log, at a bounded rate, no traceback) a request that is not a CheckRequest."""
        self._metrics.invalid.inc()
        self._malformed.log(logging.WARNING, "malformed CheckRequest from %s: %s", clip(peer), clip(str(exc)))

    @property
    def table(self) -> AuthzTable | None:
        """The live compiled policy (None before the first): what `meshgate explain` decides with."""
        return self._authorizer.table if self._authorizer is not None else None

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
        model = target.model if target is not None else ""
        self._metrics.count(decision, tenant, model)
        self._metrics.observe(time.perf_counter() - started, cached=cached)
        if span is not None and span.is_recording():
            span.set_attributes(
                {
                    "meshgate.decision": "allow" if decision.allowed else "deny",
                    "meshgate.code": decision.code,
                    "meshgate.tenant": tenant,
                    "meshgate.model": clip(model),
                    "meshgate.decision_id": decision_id,
                    "meshgate.cache_hit": cached,
                    "http.request.method": clip(req.method),
                    **genai_request(req.path, target),
                }
            )
        self._audit.record(decision, req, decision_id=decision_id, cached=cached)


def _any_issuer_keys(table: AuthzTable) -> bool:
    if not table.issuers:
        return True
    return any(
        i.secret is not None or (i.keys is not None and i.keys.keys is not None)
        for i in table.issuers.values()
    )
