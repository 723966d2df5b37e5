"""The serialized edges of the rate limiter: `RateLimitServicer.should_rate_limit` (serialized request
in, serialized response out, as `add_to_server` registers it) and the RESP connection's deadlines."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from meshgate.ratelimit import Limiter, MemoryStore, RateLimitServicer, Settings
from meshgate.ratelimit._reply import _Reply
from meshgate.ratelimit._resp import RespConnection, pack
from meshgate.ratelimit.core import Decision, HeaderStyle, Status
from meshgate.ratelimit.metrics import RateLimitMetrics
from meshgate.ratelimit.service import SERVICE_NAME, add_to_server, to_request, to_response
from tests.harness.procs import eventually

from .test_ratelimit_service import GOOD, USER, rls_request


def servicer(headers: HeaderStyle = "none", clock: Callable[[], float] = time.time) -> RateLimitServicer:
    from meshgate.ratelimit.config import load_config_dir, merge_domains

    config = merge_domains({}, load_config_dir(GOOD))
    settings = Settings(response_headers=headers)
    limiter = Limiter(MemoryStore(), config=config, settings=settings, clock=clock)
    return RateLimitServicer(limiter, RateLimitMetrics(None), "memory")


@pytest.mark.parametrize("headers", ["none", "x-ratelimit", "draft-03"])
def test_serialized_answers_match_the_message_path_and_never_cross_requests(headers: HeaderStyle) -> None:
    """Each answer is the serialization of the decision for its own request bytes: two requests that
    differ (domain, entries, limit override) never share a cached conversion, and repeats count on
    (past the limit: the response kept per request and updated in place changes codes and headers)."""

    now = [1_700_000_000.0]

    async def main() -> None:
        clock = lambda: now[0]  # noqa: E731
        wire, reference = servicer(headers, clock), servicer(headers, clock)  # same config, separate stores
        override = rls_request("compat", [("user", "x")])
        override.descriptors[0].limit.requests_per_unit = 1
        override.descriptors[0].limit.unit = rls_pb2.RateLimitResponse.RateLimit.HOUR
        requests = [
            rls_request("compat", [("user", "x")]),
            rls_request("compat", [("user", "y")]),
            override,
            rls_request("compat", [("nothing", "x")]),
            rls_request("gw", USER),
        ]
        for _ in range(5):
            now[0] += 7.5  # resets move, and a minute window rolls over once
            for pb in requests:
                raw = await wire.should_rate_limit(pb.SerializeToString(), None)  # type: ignore[arg-type]
                expected = to_response(await reference.limiter.decide(to_request(pb)))
                assert rls_pb2.RateLimitResponse.FromString(raw) == expected
                assert raw == expected.SerializeToString()
        assert len(wire._requests) == len(requests)

    asyncio.run(main())


def resident_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_kept_response_does_not_grow_with_the_header_values_set_on_it() -> None:
    """upb copies a string set on a message into the message's arena, freed only with the message: a
    response kept for the life of the process must not keep every header value it was ever given (it
    is built afresh every few thousand sets). Long numbers make the growth plain: each call here sets
    two values of 10 and 18 digits, ~40 bytes; 250k calls kept would be ~10 MiB."""
    shape = object()

    def decision(i: int) -> Decision:
        status = Status(False, 4_000_000_000, "minute", 4_000_000_000 - i, 10**17 + i)
        return Decision(False, (status,), "x-ratelimit", shape)

    reply = _Reply(decision(0))
    first = reply.message
    reply.fill(decision(1))
    before = resident_bytes()
    for i in range(2, 250_000):
        raw = reply.fill(decision(i))
    assert resident_bytes() - before < 4 << 20
    assert reply.message is not first
    assert raw == to_response(decision(249_999)).SerializeToString()


@pytest.mark.parametrize("headers", ["x-ratelimit", "draft-03"])
def test_a_kept_response_follows_the_worst_status_from_one_descriptor_to_another(headers: HeaderStyle) -> None:
    """The header values are set from the worst status's numbers: when another descriptor becomes the
    worst (another limit and unit), or one goes over the limit, every header follows."""
    shape = object()
    sequence = [
        (Status(False, 10, "minute", 9, 60), Status(False, 100, "hour", 50, 3600)),
        (Status(False, 10, "minute", 8, 59), Status(False, 100, "hour", 5, 3599)),  # the hour is worst
        (Status(False, 10, "minute", 8, 59), Status(False, 100, "hour", 5, 3599)),  # nothing changed
        (Status(True, 10, "minute", 0, 58), Status(False, 100, "hour", 4, 3598)),  # the minute is over
        (Status(False, 10, "minute", 3, 60), Status(False, 100, "hour", 3, 3597)),  # a tie: the first
    ]
    decisions = [Decision(i == 3, statuses, headers, shape) for i, statuses in enumerate(sequence)]
    reply = _Reply(decisions[0])
    for decision in decisions:
        assert reply.fill(decision) == to_response(decision).SerializeToString()


def test_a_kept_response_names_the_quotas_that_refuse_each_call() -> None:
    """The refusing quotas' names (dynamic metadata) follow each decision of one shape: set when it
    refuses, changed when others refuse, removed when it does not (shadow mode refuses nothing)."""
    shape = object()

    def decision(over: bool, first: bool, second: bool) -> Decision:
        statuses = (Status(first, 10, "minute", 0 if first else 5, 60, "rpm"),
                    Status(second, 100, "day", 0 if second else 50, 600, "tpd"))  # fmt: skip
        return Decision(over, statuses, "none", shape)

    sequence = [(False, False, False), (True, False, True), (True, True, False), (True, True, True),
                (False, False, False), (False, True, False), (True, False, True)]  # fmt: skip
    reply = _Reply(decision(*sequence[0]))
    names = []
    for args in sequence:
        d = decision(*args)
        raw = reply.fill(d)
        assert raw == to_response(d).SerializeToString()
        fields = rls_pb2.RateLimitResponse.FromString(raw).dynamic_metadata.fields
        names.append(fields["refused"].string_value if "refused" in fields else None)
    assert names == [None, "tpd", "rpm", "rpm,tpd", None, None, "tpd"]


def test_malformed_bytes_over_a_real_channel_are_invalid_argument_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bytes that are not a RateLimitRequest (a bad tag, truncated fields, invalid UTF-8 in a string),
    sent raw over a real channel to the handler `add_to_server` registers: INVALID_ARGUMENT with a
    short message, one warning line for the lot (the rest held back for a minute), no traceback; a
    good request still answers after them."""
    malformed = [b"\xff\xff", b"\x0a\x05ab", b"\x12\x01", b"\x0a\x02\xff\xfe"]

    async def main() -> tuple[list[tuple[grpc.StatusCode, str]], bytes]:
        server = grpc.aio.server()
        add_to_server(servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(f"/{SERVICE_NAME}/ShouldRateLimit")  # bytes in, bytes out
                answers = []
                for raw in malformed * 25:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await call(raw)
                    answers.append((caught.value.code(), caught.value.details() or ""))
                good = await call(rls_request("compat", [("user", "x")]).SerializeToString())
        finally:
            await server.stop(None)
        return answers, good

    caplog.set_level(logging.INFO)
    answers, good = asyncio.run(main())
    assert {code for code, _ in answers} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert {details for _, details in answers} == {"malformed RateLimitRequest: the bytes are not a valid message"}
    assert rls_pb2.RateLimitResponse.FromString(good).overall_code == rls_pb2.RateLimitResponse.OK
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in lines] == ["meshgate.ratelimit"]
    assert "malformed RateLimitRequest" in lines[0].getMessage()
    assert not any(r.exc_info or r.exc_text for r in caplog.records)


def test_message_path_still_answers_messages() -> None:
    async def main() -> None:
        answer = await servicer().ShouldRateLimit(rls_request("compat", [("user", "x")]), None)
        assert isinstance(answer, rls_pb2.RateLimitResponse)
        assert answer.overall_code == rls_pb2.RateLimitResponse.OK

    asyncio.run(main())


def test_connection_deadlines_fail_only_the_late_calls() -> None:
    """A server that never answers: each call fails at its own deadline (not earlier, not later), a
    call with no deadline keeps waiting, and the connection's one timer goes once nothing waits."""

    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(-1)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = RespConnection(host="127.0.0.1", port=port)
        loop = asyncio.get_running_loop()
        try:
            forever = asyncio.create_task(conn.call("PING"))
            started = loop.time()
            late = asyncio.create_task(conn.call("GET", "a", deadline=started + 0.3))
            soon = asyncio.create_task(conn.call("GET", "b", deadline=started + 0.1))
            with pytest.raises(TimeoutError):
                await soon
            assert 0.09 <= loop.time() - started < 0.25 and not late.done()
            with pytest.raises(TimeoutError):
                await late
            assert loop.time() - started >= 0.29
            assert not forever.done()  # 0.3 s on, the call with no deadline still waits
            assert conn._timer is None
        finally:
            await conn.close()
            server.close()
        with pytest.raises(ConnectionError):
            await forever

    asyncio.run(main())



def test_a_timed_out_connection_stalls_until_its_late_reply_is_in_and_hands_it_on() -> None:
    """A call times out: the connection is kept (no new one: Redis would run what it holds anyway), a
    call meanwhile fails at once and writes nothing, the late reply goes to `on_late` with its call's
    tag, and then calls go again on the same connection."""

    async def main() -> None:
        received: list[bytes] = []
        release = asyncio.Event()
        connections = 0

        async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            answered = 0
            while data := await reader.read(65536):
                received.append(data)
                await release.wait()
                pings = b"".join(received).count(b"PING") - answered
                writer.write(b"+PONG\r\n" * pings)
                answered += pings

        server = await asyncio.start_server(held, "127.0.0.1", 0)
        conn = RespConnection(host="127.0.0.1", port=server.sockets[0].getsockname()[1])
        late: list[tuple[Any, object]] = []
        conn.on_late = lambda reply, tag: late.append((reply, tag))
        loop = asyncio.get_running_loop()
        try:
            with pytest.raises(TimeoutError):
                await conn.call("PING", deadline=loop.time() + 0.05, tag="first")
            assert conn.stalled
            with pytest.raises(ConnectionError, match="not answering"):
                conn.send(pack(("PING",)), loop.time() + 5, "refused")
            await eventually(lambda: bool(received))  # the first PING reached the server
            release.set()
            await eventually(lambda: not conn.stalled)
            assert late == [(b"PONG", "first")]
            assert await conn.call("PING", deadline=loop.time() + 5) == b"PONG"
            assert connections == 1 and b"".join(received).count(b"PING") == 2  # the refused one: never sent
        finally:
            await conn.close()
            server.close()

    asyncio.run(main())


def test_a_connection_stalled_past_abandon_after_is_closed_and_the_next_call_connects_again() -> None:
    async def main() -> None:
        connections = 0

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            await reader.read(-1)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        conn = RespConnection(host="127.0.0.1", port=server.sockets[0].getsockname()[1], abandon_after=0)
        loop = asyncio.get_running_loop()
        try:
            with pytest.raises(TimeoutError):
                await conn.call("PING", deadline=loop.time() + 0.05)
            with pytest.raises(ConnectionError, match="connection closed"):
                conn.send(pack(("PING",)), loop.time() + 5)
            assert not conn.connected and not conn.stalled
            with pytest.raises(TimeoutError):
                await conn.call("PING", deadline=loop.time() + 0.05)  # a new connection, silent too
            assert connections == 2
        finally:
            await conn.close()
            server.close()

    asyncio.run(main())


def test_commands_queued_while_a_batch_is_unanswered_go_out_together() -> None:
    """Automatic pipelining: an idle connection writes a command at once; while it waits for the
    reply, further commands queue, and the reply's arrival sends them all in one write."""

    async def main() -> None:
        gate = asyncio.Event()
        gate.set()

        async def answer_when_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                await gate.wait()
                writer.write(b"$-1\r\n" * data.count(b"*"))  # one nil per command (no '*' in the args)

        server = await asyncio.start_server(answer_when_open, "127.0.0.1", 0)
        conn = RespConnection(host="127.0.0.1", port=server.sockets[0].getsockname()[1])
        try:
            assert await conn.call("PING") is None
            writes: list[bytes] = []
            transport = conn._protocol.transport  # type: ignore[union-attr]
            real_write = transport.write  # type: ignore[union-attr]

            def spy(data: bytes) -> None:
                writes.append(data)
                real_write(data)

            transport.write = spy  # type: ignore[union-attr,method-assign]
            gate.clear()
            first = asyncio.create_task(conn.call("GET", "a"))
            await eventually(lambda: len(writes) == 1)  # written at the end of its loop turn
            queued = []
            for n, key in enumerate("bcd", 1):  # each queued in a loop turn of its own
                queued.append(asyncio.create_task(conn.call("GET", key)))
                await eventually(lambda n=n: len(conn._outgoing) == n)
                assert not conn._flush_soon  # no write scheduled: they wait for a's reply
            assert [w.count(b"*") for w in writes] == [1]
            gate.set()
            assert await asyncio.gather(first, *queued) == [None] * 4
            assert [w.count(b"*") for w in writes] == [1, 3]
        finally:
            await conn.close()
            server.close()

    asyncio.run(main())


def test_a_pipeline_window_holds_an_idle_connections_first_command_for_others() -> None:
    """With a window, an idle connection writes its first command only when the window ends, with the
    commands queued meanwhile; a held batch that reaches the limit is written at once."""

    async def main() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(b"$-1\r\n" * data.count(b"*"))  # one nil per command

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        held = RespConnection(host="127.0.0.1", port=port, window=0.3)
        full = RespConnection(host="127.0.0.1", port=port, window=30.0, limit=2)
        try:
            writes: dict[RespConnection, list[bytes]] = {}
            for conn in (held, full):
                await conn._connect(math.inf)  # connected, nothing sent yet
                transport = conn._protocol.transport  # type: ignore[union-attr]
                real_write = transport.write  # type: ignore[union-attr]
                seen = writes[conn] = []

                def spy(data: bytes, seen: list[bytes] = seen, real_write: Any = real_write) -> None:
                    seen.append(data)
                    real_write(data)

                transport.write = spy  # type: ignore[union-attr,method-assign]

            started = loop.time()
            first = asyncio.create_task(held.call("GET", "a"))
            await eventually(lambda: len(held._outgoing) == 1)
            second = asyncio.create_task(held.call("GET", "b"))  # a loop turn later: joins the first
            await eventually(lambda: len(held._outgoing) == 2)
            assert writes[held] == []  # held, not written at the end of the loop turn
            assert await asyncio.gather(first, second) == [None, None]
            assert [w.count(b"*") for w in writes[held]] == [2]  # one write, when the window ended
            assert loop.time() - started >= 0.29

            # the limit: 2 commands held are written at once (the 30 s window would fail the test)
            both = asyncio.gather(full.call("GET", "c"), full.call("GET", "d"))
            assert await asyncio.wait_for(both, 10) == [None, None]
            assert [w.count(b"*") for w in writes[full]] == [2]
            assert full._hold is None  # its timer cancelled
        finally:
            await held.close()
            await full.close()
            server.close()

    asyncio.run(main())

