"""The audit trail: one JSON line per decision on the logger `meshgate.extauthz.audit` (INFO).

A line is built from the Decision only (never a header, token or key value); the client-chosen strings
in it (user, model, version, request id, source) are cut to LOGGED_STRING_BYTES bytes (bounds.clip).
Lines are handed to logging in batches, one record of several lines at most every `flush_after` seconds
(50 ms), and at stop: a write per check costs a grpc.aio server as much as the whole cached decision.
Every line is a complete JSON object with its own timestamp `ts`, so a reader splits records on newlines
and needs nothing from the record prefix. Without a running event loop a line is logged at once. A check
only notes its decision; the lines are formatted at the flush, the decision's part of a line once per
batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from .bounds import LOGGED_STRING_BYTES, clip
from .request import CheckInput, Decision

__all__ = ["AuditLog", "audit_record"]

_encode = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps with options builds one per call
_string = json.encoder.encode_basestring_ascii  # a JSON string literal, as the encoder writes it
_Entry = tuple[float, str, Decision, bool, str, str]  # ts, decision id, decision, cached, request id, source
_SHORT = LOGGED_STRING_BYTES >> 2  # a string of at most this many characters is within the bound


def audit_record(decision: Decision, req: CheckInput, decision_id: str, cached: bool) -> dict[str, object]:
    """One audit line as a dict (the lines the log writes are this, key for key)."""
    return {
        "audit": "extauthz",
        "ts": round(time.time(), 3),
        "decision_id": decision_id,
        **_decision_fields(decision),
        "cache": cached,
        "request_id": clip(req.request_id),
        "source": clip(req.source),
    }


def _decision_fields(decision: Decision) -> dict[str, object]:
    who, target = decision.identity, decision.target
    return {
        "decision": "allow" if decision.allowed else "deny",
        "code": decision.code,
        "status": decision.status,
        "tenant": who.tenant if who else None,
        "user": clip(who.user) if who else None,
        "credential": who.credential if who else None,
        "model": clip(target.model) if target else None,
        "version": clip(target.version) if target else None,
        "tokens": target.tokens if target else None,
    }


def _line(entry: _Entry, fragments: dict[int, str]) -> str:
    """The JSON line of one entry. The decision's part is encoded once per batch and decision: cached
    decisions are one object, seen on most lines of a batch."""
    ts, decision_id, decision, cached, request_id, source = entry
    fragment = fragments.get(id(decision))
    if fragment is None:
        fragment = fragments[id(decision)] = _encode(_decision_fields(decision))[1:-1]
    if len(request_id) > _SHORT or len(source) > _SHORT:
        request_id, source = clip(request_id), clip(source)
    return (
        f'{{"audit":"extauthz","ts":{ts:.3f},"decision_id":{_string(decision_id)},{fragment},'
        f'"cache":{"true" if cached else "false"},"request_id":{_string(request_id)},'
        f'"source":{_string(source)}}}'
    )


class AuditLog:
    def __init__(self, logger: logging.Logger | None = None, *, flush_after: float = 0.05) -> None:
        self.logger = logger or logging.getLogger("meshgate.extauthz.audit")
        self.flush_after = flush_after
        self._pending: list[_Entry] = []

    def record(self, decision: Decision, req: CheckInput, *, decision_id: str, cached: bool) -> None:
        """Note one decision; its line is written at the next flush (formatting is deferred to it)."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        entry = (time.time(), decision_id, decision, cached, req.request_id, req.source)
        if not self._pending:
            try:
                asyncio.get_running_loop().call_later(self.flush_after, self.flush)
            except RuntimeError:  # no loop: nothing would flush later
                self.logger.info("%s", _line(entry, {}))
                return
        self._pending.append(entry)

    def flush(self) -> None:
        if self._pending:
            entries, self._pending = self._pending, []
            fragments: dict[int, str] = {}  # by id(decision): every decision stays alive in `entries`
            self.logger.info("%s", "\n".join(_line(entry, fragments) for entry in entries))
