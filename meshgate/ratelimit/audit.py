"""Refusals: each request a quota refused, counted and written as a JSON audit line.

extauthz decides before the rate limiter runs, so its audit line for a request that then gets a 429
says `allow`. This is the other half: on the logger `meshgate.ratelimit.audit` (INFO), one line per
(quota, tenant, user, model) refused within a flush interval, with how many times:

    {"audit":"ratelimit","ts":...,"decision":"deny","code":"over_limit","status":429,"quota":"tenant-rpm",
     "tenant":"acme","user":null,"model":"demo","domain":"meshgate","limit":5,"window":"minute",
     "reset":37,"count":3}

and the counter `meshgate_ratelimit_refusals_total{domain, quota, tenant, model}` (metrics.py). With the
same labels, `meshgate_ratelimit_usage_unreported_total` counts the stream-end charges of the admission
estimate: responses that reported no usage (`unreported`, docs/llm.md).

Bounded. Label values are names the policy declares (any other: `unknown`; a refusal by a rule that is
not a policy quota, from the envoyproxy/ratelimit YAML directory: quota `other`). A line names the
tenant, user and model only for a policy quota's descriptor (values extauthz set: identities, never a
credential); for any other rule it names the rule only (its descriptor values could be anything a
request carries, a key included). The user is clipped to 256 bytes. At most `max_lines` lines per
interval; the refusals past them are summed in one line `{"audit":"ratelimit","dropped":N}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from meshgate import contract

from .decision import Decision, Request, Status
from .metrics import RateLimitMetrics

__all__ = ["PolicyNames", "RefusalLog", "estimate_charges"]

UNKNOWN, OTHER = "unknown", "other"
USER_BYTES = 256
_encode = json.JSONEncoder(separators=(",", ":")).encode
_Key = tuple[str, str, str | None, str | None, str | None]  # domain, quota, tenant, user, model


@dataclass(frozen=True)
class PolicyNames:
    """The names the policy declares: the only label values (and logged names) besides `unknown`."""

    quotas: frozenset[str] = field(default_factory=frozenset)
    tenants: frozenset[str] = field(default_factory=frozenset)
    models: frozenset[str] = field(default_factory=frozenset)


@dataclass
class _Pending:
    ts: float
    status: Status
    count: int = 0


def estimate_charges(request: Request) -> tuple[int, ...]:
    """The positions of the estimate charges: descriptors ending with `meshgate.refused=none,
    meshgate.used=<not reported>` (contract.USED_KEY; the limiter charges their hits_addend, the
    admission estimate)."""
    return tuple(i for i, d in enumerate(request.descriptors) if _charges_estimate(d.entries))


def _charges_estimate(entries: tuple[tuple[str, str], ...]) -> bool:
    return (
        len(entries) > 1
        and entries[-1][0] == contract.USED_KEY
        and entries[-1][1] != contract.USAGE_REPORTED
        and not (entries[-2][0] == contract.REFUSED_ENTRY and entries[-2][1] != contract.USAGE_UNREPORTED)
    )  # as the limiter reads them (core._strip_phase)


def _clip(value: str | None) -> str | None:
    if value is None or len(value) <= USER_BYTES // 4:  # at most 4 bytes a character
        return value
    return value.encode(errors="replace")[:USER_BYTES].decode(errors="ignore")


class RefusalLog:
    """`refused(request, decision)` for every decision that refuses a request."""

    def __init__(
        self,
        metrics: RateLimitMetrics,
        logger: logging.Logger | None = None,
        *,
        flush_after: float = 1.0,
        max_lines: int = 100,
    ) -> None:
        self.metrics = metrics
        self.logger = logger or logging.getLogger("meshgate.ratelimit.audit")
        self.flush_after, self.max_lines = flush_after, max_lines
        self.names = PolicyNames()
        self._pending: dict[_Key, _Pending] = {}
        self._dropped = 0

    def refused(self, request: Request, decision: Decision) -> None:
        """Count and note each descriptor of `request` that `decision` refused."""
        for status, descriptor in zip(decision.statuses, request.descriptors, strict=True):
            if status.over_limit:
                self._one(request.domain, dict(descriptor.entries), status)

    def unreported(self, request: Request, decision: Decision, indices: tuple[int, ...]) -> None:
        """Count the estimate charges among the descriptors at `indices` (those ending with
        `meshgate.used` other than `reported`) that a rule applied to: meshgate_ratelimit_usage_
        unreported_total{domain, quota, tenant, model}, the refusals' labels."""
        for i in indices:
            if decision.statuses[i].limit is not None:
                labels = self._key(request.domain, dict(request.descriptors[i].entries))[0]
                self.metrics.unreported[labels] = self.metrics.unreported.get(labels, 0) + 1

    def _key(self, domain: str, entries: dict[str, str]) -> tuple[tuple[str, str, str, str], _Key]:
        """The metric labels (domain, quota, tenant, model) and the log line's key of a descriptor."""
        names = self.names
        quota = entries.get(contract.QUOTA_KEY)
        if quota is not None and quota in names.quotas:
            tenant, model = entries.get("tenant"), entries.get("model")
            tenant = tenant if tenant is None or tenant in names.tenants else UNKNOWN
            model = model if model is None or model in names.models else UNKNOWN
            key: _Key = (domain, quota, tenant, _clip(entries.get("user")), model)
        else:  # a rule of the YAML directory: counted as `other`, its descriptor values never logged
            quota, tenant, model = OTHER, None, None
            key = (domain, OTHER, None, None, None)
        return (domain, quota, tenant or UNKNOWN, model or UNKNOWN), key

    def _one(self, domain: str, entries: dict[str, str], status: Status) -> None:
        labels, key = self._key(domain, entries)
        self.metrics.refusals[labels] = self.metrics.refusals.get(labels, 0) + 1
        if self.logger.isEnabledFor(logging.INFO):
            self._note(key, status)

    def _note(self, key: _Key, status: Status) -> None:
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= self.max_lines:
                self._dropped += 1
                return
            if not self._pending and not self._schedule():
                self.logger.info("%s", _line(key, _Pending(time.time(), status, 1)))
                return
            pending = self._pending[key] = _Pending(time.time(), status)
        pending.status = status  # the latest: its reset
        pending.count += 1

    def _schedule(self) -> bool:
        try:
            asyncio.get_running_loop().call_later(self.flush_after, self.flush)
        except RuntimeError:  # no loop: nothing would flush later
            return False
        return True

    def flush(self) -> None:
        lines = [_line(key, pending) for key, pending in self._pending.items()]
        if self._dropped:
            dropped = {"audit": "ratelimit", "ts": round(time.time(), 3), "dropped": self._dropped}
            lines.append(_encode(dropped))
        self._pending, self._dropped = {}, 0
        if lines:
            self.logger.info("%s", "\n".join(lines))


def _line(key: _Key, pending: _Pending) -> str:
    domain, quota, tenant, user, model = key
    status = pending.status
    return _encode({
        "audit": "ratelimit",
        "ts": round(pending.ts, 3),
        "decision": "deny",
        "code": "over_limit",
        "status": 429,
        "quota": quota,
        "tenant": tenant,
        "user": user,
        "model": model,
        "domain": domain,
        "limit": status.limit,
        "window": status.unit,
        "reset": status.reset,
        "count": pending.count,
    })  # fmt: skip
