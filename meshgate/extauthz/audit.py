"""The audit trail: one JSON line per decision on the logger `meshgate.extauthz.audit` (INFO).

A line is built from the Decision only (never a header, token or key value). Lines are handed to logging
in batches, one record of several lines at most every `flush_after` seconds (50 ms), and at stop: a write
per check costs a grpc.aio server as much as the whole cached decision. Every line is a complete JSON
object with its own timestamp `ts`, so a reader splits records on newlines and needs nothing from the
record prefix. Without a running event loop a line is logged at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from .request import CheckInput, Decision

__all__ = ["AuditLog", "audit_record"]

_encode = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps with options builds one per call


def audit_record(decision: Decision, req: CheckInput, decision_id: str, cached: bool) -> dict[str, object]:
    who, target = decision.identity, decision.target
    return {
        "audit": "extauthz",
        "ts": round(time.time(), 3),
        "decision_id": decision_id,
        "decision": "allow" if decision.allowed else "deny",
        "code": decision.code,
        "status": decision.status,
        "tenant": who.tenant if who else None,
        "user": who.user if who else None,
        "credential": who.credential if who else None,
        "model": target.model if target else None,
        "version": target.version if target else None,
        "tokens": target.tokens if target else None,
        "cache": cached,
        "request_id": req.request_id,
        "source": req.source,
    }


class AuditLog:
    def __init__(self, logger: logging.Logger | None = None, *, flush_after: float = 0.05) -> None:
        self.logger = logger or logging.getLogger("meshgate.extauthz.audit")
        self.flush_after = flush_after
        self._pending: list[str] = []

    def record(self, decision: Decision, req: CheckInput, *, decision_id: str, cached: bool) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        line = _encode(audit_record(decision, req, decision_id, cached))
        if not self._pending:
            try:
                asyncio.get_running_loop().call_later(self.flush_after, self.flush)
            except RuntimeError:  # no loop: nothing would flush later
                self.logger.info("%s", line)
                return
        self._pending.append(line)

    def flush(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            self.logger.info("%s", "\n".join(lines))
