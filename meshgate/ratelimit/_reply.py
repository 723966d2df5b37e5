"""The responses of ShouldRateLimit: `to_response` builds one from a Decision; `_Replies` keeps one
per decision shape and updates it in place for each call (see docs/ratelimit.md, "The hot path").

An answer that refuses carries `dynamic_metadata {refused: "<quota>,..."}` (contract.REFUSED_KEY): the
quotas over their limit. Envoy's rate limit filter stores it under its own name before it sends the
429, where the gateway's local reply names them (docs/llm.md).

Both caches here hold a byte budget (bounds.py): the `current_limit` messages (one per limit and unit
seen, limit overrides included) and the kept responses.
"""

from __future__ import annotations

from envoy.service.ratelimit.v3 import rls_pb2

from meshgate.contract import REFUSED_KEY

from .bounds import MIB, Budget
from .decision import Decision, Request, limit_header, policy_header
from .model import Unit

__all__ = ["CURRENT_LIMITS", "UNIT_FROM_PB", "to_response"]

_Code = rls_pb2.RateLimitResponse.Code
_PbRateLimit = rls_pb2.RateLimitResponse.RateLimit
_PbUnit = _PbRateLimit.Unit
_OK: int = _Code.OK  # plain ints: enum attribute lookups are slow on the hot path
_OVER_LIMIT: int = _Code.OVER_LIMIT
UNIT_FROM_PB: dict[int, Unit] = {
    _PbUnit.SECOND: "second", _PbUnit.MINUTE: "minute", _PbUnit.HOUR: "hour", _PbUnit.DAY: "day",
    _PbUnit.WEEK: "week", _PbUnit.MONTH: "month", _PbUnit.YEAR: "year",
}
_UNIT_TO_PB = {name: value for value, name in UNIT_FROM_PB.items()}
_REBUILD_AFTER = 4096  # header value sets before a kept response is built afresh (see _Reply)
RESPONSES_BUDGET = 4 * MIB
# `current_limit` messages by (limit, unit): a limit override is any uint32, so they are bounded too
CURRENT_LIMITS = Budget("current_limits", 1 * MIB, entries_max=4096)
_current_limits: dict[tuple[int, Unit], rls_pb2.RateLimitResponse.RateLimit] = {}


def _current_limit(requests_per_unit: int, unit: Unit) -> rls_pb2.RateLimitResponse.RateLimit:
    """The `current_limit` message of a (limit, unit): built once, copied into each status."""
    found = _current_limits.get((requests_per_unit, unit))
    if found is None:
        found = _PbRateLimit(requests_per_unit=requests_per_unit, unit=_UNIT_TO_PB[unit])
        if CURRENT_LIMITS.admit(_current_limits, 250):
            _current_limits[(requests_per_unit, unit)] = found
    return found



def to_response(decision: Decision) -> rls_pb2.RateLimitResponse:
    response = rls_pb2.RateLimitResponse(overall_code=_OVER_LIMIT if decision.over_limit else _OK)
    statuses = response.statuses
    for s in decision.statuses:
        code = _OVER_LIMIT if s.over_limit else _OK
        if s.limit is None or s.unit is None:  # no rule (remaining 0), or an unlimited one (remaining 2^32-1)
            statuses.add(code=code, limit_remaining=s.remaining)
            continue
        status = statuses.add(
            code=code, current_limit=_current_limit(s.limit, s.unit), limit_remaining=s.remaining
        )
        status.duration_until_reset.seconds = s.reset
    headers = response.response_headers_to_add
    for name, value in decision.headers:
        headers.add(key=name, value=value)
    refused = decision.refused
    if refused:
        response.dynamic_metadata.fields[REFUSED_KEY].string_value = refused
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

    __slots__ = ("headers", "held", "limited", "message", "overall", "refused", "sets", "shape", "style")

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
        # the limit, remaining and reset header messages (none, or all three: fixed by the shape), then
        # RateLimit-Policy when the worst status's rule has a name, and the worst status's [limit, unit,
        # remaining, reset, name] their values were made from
        self.headers = list(self.message.response_headers_to_add)
        worst = decision.worst
        self.held = [worst.limit, worst.unit, worst.remaining, worst.reset, worst.name] if worst else []
        self.refused = decision.refused  # the names in dynamic_metadata ("": none)
        self.sets = 0  # header values set since the message was built

    def fill(self, decision: Decision) -> bytes:
        if self.sets >= _REBUILD_AFTER:  # a fresh arena (see the class doc)
            self._build(decision)
            return bytes(self.message.SerializeToString())
        message = self.message
        overall = _OVER_LIMIT if decision.over_limit else _OK
        if overall != self.overall:
            message.overall_code = self.overall = overall
        if overall == _OVER_LIMIT or self.refused:  # who refused: named only on a refusal
            refused = decision.refused
            if refused != self.refused:
                if refused:
                    message.dynamic_metadata.fields[REFUSED_KEY].string_value = refused
                    self.sets += 1
                else:
                    message.ClearField("dynamic_metadata")
                self.refused = refused
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
            if worst.limit != held[0] or worst.unit != held[1] or worst.name != held[4]:  # another is worst
                if bool(worst.name) != bool(held[4]):  # RateLimit-Policy comes or goes: a new message
                    self._build(decision)
                    return bytes(self.message.SerializeToString())
                self.headers[0].value = limit_header(self.style, worst.limit, worst.unit)
                if worst.name:
                    self.headers[3].value = policy_header(worst.name, worst.limit, worst.unit)
                held[0], held[1], held[4] = worst.limit, worst.unit, worst.name
                self.sets += 1
        return bytes(message.SerializeToString())


class _Entry:
    """What the servicer keeps per serialized request: the request, and the reply it last used."""

    __slots__ = ("reply", "request", "unreported")

    def __init__(self, request: Request, unreported: tuple[int, ...] = ()) -> None:
        self.request = request
        self.reply: _Reply | None = None
        self.unreported = unreported  # the estimate charges' positions (service.py)


class _Replies:
    """The kept responses, one per decision shape, within `budget` (a response's size estimated from
    its serialized size: upb keeps about three times that, plus the message objects the reply holds).
    A shape whose response would take more than the budget's entry limit is answered afresh each call.
    An entry keeps the reply it last used, so a reply dropped here lives on while entries hold it: the
    requests' own budget bounds those (a request's reply is no larger than the request, per status)."""

    def __init__(self, budget: Budget) -> None:
        self._by_shape: dict[object, _Reply] = {}
        self.budget = budget

    def answer(self, entry: _Entry, decision: Decision) -> bytes:
        reply = entry.reply
        if reply is None or reply.shape is not decision.shape:
            shape = decision.shape
            if shape is None:
                return bytes(to_response(decision).SerializeToString())
            reply = self._by_shape.get(shape)
            if reply is None:
                reply = _Reply(decision)
                if not self.budget.admit(self._by_shape, 2048 + 4 * reply.message.ByteSize()):
                    return reply.fill(decision)
                self._by_shape[shape] = reply
            reply.shape = shape  # an equal shape from a newer config: the next call matches at once
            entry.reply = reply
        return reply.fill(decision)
