"""The audit log: one JSON line per decision, lines of one loop turn in one record, never a credential."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from meshgate.extauthz import CheckInput, Decision, Identity, Target
from meshgate.extauthz.audit import AuditLog, audit_record

WHO = Identity(tenant="acme", user="alice", tier="gold", roles=(), credential="api_key:acme-ci")
SECRET = "key-never-logged"
REQ = CheckInput(method="POST", path="/v2/models/m/infer", headers={"x-api-key": SECRET}, request_id="r1")
ALLOW = Decision(code="ok", identity=WHO, target=Target(kind="model", model="m"))


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    messages = [r.getMessage() for r in caplog.records if r.name == "meshgate.extauthz.audit"]
    assert all(SECRET not in m for m in messages)
    return [json.loads(line) for m in messages for line in m.split("\n")]


def test_without_a_loop_each_line_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshgate.extauthz.audit")
    log = AuditLog()
    log.record(ALLOW, REQ, decision_id="d1", cached=False)
    log.record(Decision.deny("missing_credentials", "no"), REQ, decision_id="d2", cached=False)
    got = lines(caplog)
    assert [(x["decision_id"], x["code"], x["tenant"]) for x in got] == [
        ("d1", "ok", "acme"),
        ("d2", "missing_credentials", None),
    ]
    assert got[0]["credential"] == "api_key:acme-ci" and got[0]["request_id"] == "r1"


def test_lines_are_batched_into_one_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshgate.extauthz.audit")
    log = AuditLog(flush_after=0.05)
    scheduled: list[tuple[float, object]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later = lambda delay, callback, *args: scheduled.append((delay, callback))  # type: ignore[method-assign]
        for n in range(3):
            log.record(ALLOW, REQ, decision_id=f"d{n}", cached=True)
        assert caplog.records == []  # held until the scheduled flush

    asyncio.run(scenario())
    assert scheduled == [(0.05, log.flush)]  # one flush for the batch
    log.flush()
    assert len([r for r in caplog.records if r.name == "meshgate.extauthz.audit"]) == 1
    assert [x["decision_id"] for x in lines(caplog)] == ["d0", "d1", "d2"]


def test_off_when_the_logger_is_above_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="meshgate.extauthz.audit")
    AuditLog().record(ALLOW, REQ, decision_id="d1", cached=False)
    assert caplog.records == []


def test_a_line_is_the_audit_record(caplog: pytest.LogCaptureFixture) -> None:
    """Lines are formatted at the flush from a per-batch fragment: still exactly audit_record, key for key."""
    caplog.set_level(logging.INFO, logger="meshgate.extauthz.audit")
    log = AuditLog()
    odd = CheckInput(method="GET", path="/", request_id='r"\\\u00e9\n', source="::1")
    deny = Decision.deny("model_forbidden", "no", identity=WHO)
    for decision, req, cached in ((ALLOW, REQ, True), (deny, odd, False)):
        log.record(decision, req, decision_id="d1", cached=cached)
        got = lines(caplog)[-1]
        expected = audit_record(decision, req, "d1", cached)
        assert list(got) == list(expected)  # same keys, same order
        assert abs(float(got.pop("ts")) - float(expected.pop("ts"))) < 60  # type: ignore[arg-type]
        assert got == expected
