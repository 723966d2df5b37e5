"""meshgate.admin.v1.Admin: what this process has loaded and whether it is healthy, and what it would
do with a request.

Served on every meshgate gRPC port beside grpc.health.v1. It reads; it never changes anything (Explain
and the quota counters are read as checks that add nothing: meshgate/explain.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from . import __version__
from ._proto import admin_pb2
from .health import Health
from .models import EndpointHealth, EndpointKey, EndpointState, Readiness, version_endpoints
from .policy.model import ModelVersion, Policy
from .policy.store import PolicyStore, Rejection
from .xds._wire import Malformed, abort_malformed, parse, register
from .xds.status import StatusBoard

log = logging.getLogger("meshgate.admin")

if TYPE_CHECKING:  # (explain imports extauthz, whose Triton body reader loads tritonclient.grpc: the demo
    # KServe server imports this module and must not load it, see tests/unit/test_models_cli.py)
    from .explain import HttpRequest, QuotaRow

__all__ = ["AdminService", "Operations", "live_operations", "print_status", "status_message"]


@dataclass(frozen=True, kw_only=True)
class Operations:
    """What the admin service reads beside the policy and health: each piece from the service that
    owns it, wired by the composition root (meshgate/server.py). None: that part is not reported."""

    proxies: StatusBoard | None = None
    """xds: every connected Envoy's stream, with what it ACKed and NACKed per type."""
    quotas: Callable[[], Awaitable[tuple[list[QuotaRow], int]]] | None = None
    """ratelimit: each quota's counters now, and how many were not listed."""
    rejections: Callable[[], list[Rejection | None]] | None = None
    """The last input each reload source refused (policy, ratelimit directory)."""
    explain: Callable[[HttpRequest], Awaitable[dict[str, Any]]] | None = None
    """What the live services would do with one request."""


def status_message(
    store: PolicyStore, health: Health, readiness: Readiness | None = None
) -> admin_pb2.Status:
    """The Status reply, built from plain state (testable without a server).

    With `readiness` (the model prober), each version lists the health of its probed endpoints.
    """
    status = admin_pb2.Status(
        policy_generation=store.generation,
        policy_source=str(store.path),
        serving=health.ok,
        version=__version__,
        components=[admin_pb2.Component(name=n, up=up) for n, up in sorted(health.components().items())],
    )
    if store.loaded:
        status.models.extend(_models(store.policy, readiness.snapshot() if readiness else {}))
    return status


_HEALTH = {
    EndpointHealth.UNKNOWN: admin_pb2.ENDPOINT_HEALTH_UNKNOWN,
    EndpointHealth.HEALTHY: admin_pb2.ENDPOINT_HEALTH_HEALTHY,
    EndpointHealth.UNHEALTHY: admin_pb2.ENDPOINT_HEALTH_UNHEALTHY,
}


def _endpoint_health(
    model: str, version: ModelVersion, states: Mapping[EndpointKey, EndpointState]
) -> list[admin_pb2.EndpointStatus]:
    out = []
    for endpoint in version_endpoints(version):
        state = states.get(EndpointKey(model, version.name, endpoint))
        if state is not None:
            out.append(
                admin_pb2.EndpointStatus(
                    endpoint=endpoint,
                    health=_HEALTH[state.health],
                    detail=state.detail,
                    consecutive_failures=state.failures,
                    consecutive_successes=state.successes,
                )
            )
    return out


def _models(policy: Policy, states: Mapping[EndpointKey, EndpointState]) -> list[admin_pb2.ModelStatus]:
    out = []
    for model in policy.models:
        out.append(
            admin_pb2.ModelStatus(
                name=model.name,
                protocol=model.protocol,
                visibility=model.visibility,
                shadow_version=model.shadow.version if model.shadow else "",
                shadow_percent=model.shadow.percent if model.shadow else 0.0,
                versions=[
                    admin_pb2.ModelVersionStatus(
                        name=v.name,
                        weight=v.weight or 0,
                        endpoints=list(v.endpoints)
                        or ([f"{v.kserve.service}.{v.kserve.namespace}:{v.kserve.port}"] if v.kserve else []),
                        endpoint_health=_endpoint_health(model.name, v, states),
                    )
                    for v in model.versions
                ],
            )
        )
    return out


def _proxies(board: StatusBoard) -> list[admin_pb2.ProxyStatus]:
    out = []
    for stream in board.snapshot():
        types = [admin_pb2.TypeStatus(type=name, **entry) for name, entry in stream["types"].items()]
        out.append(admin_pb2.ProxyStatus(
            node=stream["node"], protocol=stream["protocol"], connected_at=stream["connected_at"], types=types
        ))  # fmt: skip
    return sorted(out, key=lambda p: (p.node, p.connected_at))


def _quota(row: QuotaRow) -> admin_pb2.QuotaUse:
    return admin_pb2.QuotaUse(
        quota=row.quota, tenant=row.tenant or "", model=row.model or "", limit=row.limit, window=row.window,
        unit=row.unit, used=row.used, remaining=row.remaining, per_user=row.per_user, shadow=row.shadow,
    )  # fmt: skip


async def add_operations(status: admin_pb2.Status, store: PolicyStore, ops: Operations) -> None:
    """The live parts of Status: connected Envoys, quota counters, the last rejected reload."""
    status.policy_digest, status.policy_applied_at = store.digest, store.applied_at
    if ops.proxies is not None:
        status.proxies.extend(_proxies(ops.proxies))
    if ops.quotas is not None and store.loaded:
        from .ratelimit.store import StoreUnavailable

        try:
            rows, more = await ops.quotas()
        except StoreUnavailable as exc:  # (the status says so: `ratelimit` is down; the rest still reads)
            log.warning("status without the quotas' use: %s", exc)
        else:
            status.quotas.extend(_quota(row) for row in rows)
            status.quotas_not_listed = more
    found = [r for r in (ops.rejections() if ops.rejections else []) if r is not None]
    if found:
        last = max(found, key=lambda r: r.at)
        status.last_rejected.CopyFrom(
            admin_pb2.Rejection(at=last.at, input=last.input, result=last.result, errors=list(last.errors))
        )


def live_operations(policies: PolicyStore, extauthz: Any, xds: Any, ratelimit: Any) -> Operations:
    """What `meshgate status` and `meshgate explain --addr` read from the running services (wired by
    meshgate/server.py): the Envoys on xds's streams, the quota counters of ratelimit's limiter, the last
    rejected reload (policy store, ratelimit directory), and explanations decided by extauthz's live
    table, xds's live snapshot and the live counters."""
    from .explain import Sources, explain, quota_usage

    async def quotas() -> tuple[list[QuotaRow], int]:
        return await quota_usage(policies.policy, ratelimit.limiter)

    async def explain_live(request: HttpRequest) -> dict[str, Any]:
        table, snapshot = extauthz.table, xds.cache.current
        if table is None or snapshot is None:
            raise RuntimeError("no policy compiled yet")
        return await explain(request, Sources(policies.policy, table, snapshot, ratelimit.limiter, live=True))

    return Operations(
        proxies=xds.board,
        quotas=quotas,
        rejections=lambda: [policies.last_rejected, ratelimit.last_rejected],
        explain=explain_live,
    )


class AdminService:
    """meshgate.admin.v1.Admin over request bytes: a malformed request is INVALID_ARGUMENT."""

    grpc_names = ("meshgate.admin.v1.Admin",)

    def __init__(
        self,
        store: PolicyStore,
        health: Health,
        readiness: Readiness | None = None,
        operations: Operations | None = None,
    ) -> None:
        self._store = store
        self._health = health
        self._readiness = readiness
        self._ops = operations or Operations()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        register(server, self.grpc_names[0], {
            "GetStatus": grpc.unary_unary_rpc_method_handler(
                self.GetStatus, response_serializer=admin_pb2.Status.SerializeToString
            ),
            "Explain": grpc.unary_unary_rpc_method_handler(
                self.Explain, response_serializer=admin_pb2.Explanation.SerializeToString
            ),
        })  # fmt: skip

    async def GetStatus(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> admin_pb2.Status:
        try:
            parse(admin_pb2.GetStatusRequest, raw)
        except Malformed as exc:
            await abort_malformed(context, "GetStatus", exc)
        status = status_message(self._store, self._health, self._readiness)
        await add_operations(status, self._store, self._ops)
        return status

    async def Explain(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> admin_pb2.Explanation:
        try:
            request = parse(admin_pb2.ExplainRequest, raw)
        except Malformed as exc:
            await abort_malformed(context, "Explain", exc)
        if self._ops.explain is None or not self._store.loaded:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "nothing to explain with yet")
            raise AssertionError("unreachable: abort raises")
        from .explain import HttpRequest
        from .ratelimit.store import StoreUnavailable

        http = HttpRequest(request.method or "GET", request.path or "/", dict(request.headers), request.body)
        try:
            return admin_pb2.Explanation(json=json.dumps(await self._ops.explain(http)))
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the quotas' counters cannot be read: {exc}")
            raise AssertionError("unreachable: abort raises") from None


# --- what `meshgate status` prints ------------------------------------------------------------------


def print_status(status: admin_pb2.Status, addr: str) -> None:
    """Print a Status as `meshgate status` does."""
    state = "SERVING" if status.serving else "NOT_SERVING"
    print(f"meshgate {status.version} at {addr}: {state}, policy generation {status.policy_generation}")
    applied = f" (sha256 {status.policy_digest[:16]}, applied {_when(status.policy_applied_at)})"
    print(f"policy: {status.policy_source}" + (applied if status.policy_digest else ""))
    print("components: " + ", ".join(f"{c.name}={'up' if c.up else 'DOWN'}" for c in status.components))
    if status.HasField("last_rejected"):
        r = status.last_rejected
        print(f"last rejected: {r.input} at {_when(r.at)} ({r.result}); the live one kept")
        for error in r.errors:
            print(f"  {error}")
    _print_proxies(status)
    _print_quotas(status)
    for model in status.models:
        shadow = f", shadow {model.shadow_version} {model.shadow_percent:g}%" if model.shadow_version else ""
        print(f"model {model.name} ({model.protocol}, {model.visibility}{shadow})")
        for v in model.versions:
            print(f"  {v.name:<12} weight {v.weight:>3}  {' '.join(v.endpoints)}")


def _when(epoch: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_proxies(status: Any) -> None:
    print(f"envoys: {len(status.proxies)} connected")
    for proxy in status.proxies:
        print(f"  {proxy.node} ({proxy.protocol}, since {_when(proxy.connected_at)})")
        for t in proxy.types:
            pushes = f"{t.pushes} push{'es' if t.pushes != 1 else ''}"
            if t.sent == t.acked:
                line = f"ACK {t.acked} ({pushes})"
            elif t.sent == t.nacked:
                line = f"NACK {t.nacked} ({pushes}): {t.error}; it keeps {t.acked or 'nothing of this type'}"
            else:
                line = f"sent {t.sent}, no answer yet ({pushes}); ACKed {t.acked or 'nothing'}"
            if t.nacked and t.sent != t.nacked:
                line += f"; last NACK {t.nacked}: {t.error}"
            print(f"    {t.type:<22} {line}")


def _print_quotas(status: Any) -> None:
    if not status.quotas:
        return
    print("quotas:")
    for q in status.quotas:
        who = " ".join(part for part in (f"tenant {q.tenant}" if q.tenant else "",
                                         f"model {q.model}" if q.model else "") if part)  # fmt: skip
        shadow = " (shadow)" if q.shadow else ""
        if q.per_user:
            use = f"per user, {q.limit} {q.unit} per {q.window} each (not listed)"
        else:
            use = f"{q.used}/{q.limit} {q.unit} this {q.window}, {q.remaining} left"
        print(f"  {q.quota}{shadow} {who or 'everyone'}: {use}")
    if status.quotas_not_listed:
        print(f"  ... and {status.quotas_not_listed} more counters")


