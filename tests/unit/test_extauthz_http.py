"""ext_authz over HTTP: to_http's answers, HttpCheckServer on a real localhost socket, and the xds
header lists the answers must fit (meshgate/xds/_authz_http.py)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
from envoy.service.auth.v3 import external_auth_pb2

from meshgate import contract
from meshgate.extauthz import http as http_module
from meshgate.extauthz import responses
from meshgate.extauthz.http import MAX_HEAD_BYTES, HttpCheckServer, to_http
from meshgate.extauthz.request import CheckInput, Decision, Identity, Target, Unavailable
from meshgate.xds._authz_http import CLIENT_HEADERS, UPSTREAM_HEADERS
from tests.harness.procs import eventually

GUARD_S = 10.0  # a bound on each read, so a broken server fails the test instead of hanging it


@dataclass
class Answer:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str:
        values = [v for k, v in self.headers if k == name]
        assert len(values) == 1, (name, self.headers)
        return values[0]


class _Collector:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Answer] = []
        self.current = Answer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name.decode(), value.decode()))

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.current.status = self.parser.get_status_code()
        self.done.append(self.current)
        self.current = Answer()


def parse(data: bytes) -> list[Answer]:
    collector = _Collector()
    collector.parser.feed_data(data)
    return collector.done


# --- to_http ----------------------------------------------------------------------------------------


def test_allow_becomes_200_with_headers_removals_and_metadata() -> None:
    response = responses.allow(
        {"x-meshgate-tenant": "acme", "x-meshgate-user": "alice"},
        remove=["authorization", "x-api-key"],
        metadata={"model": "llama", "tokens": 42},
    )
    raw = to_http(response)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    (answer,) = parse(raw)
    assert (answer.status, answer.body) == (200, b"")
    md = contract.HTTP_METADATA_PREFIX
    expected = [
        ("x-meshgate-tenant", "acme"), ("x-meshgate-user", "alice"),
        ("x-envoy-auth-headers-to-remove", "authorization,x-api-key"),
        (md + "model", "llama"), (md + "tokens", "42"), ("content-length", "0"),
    ]  # fmt: skip
    assert sorted(answer.headers) == sorted(expected)  # each once; no connection: close either


def test_allow_without_removals_or_metadata_has_no_such_headers() -> None:
    (answer,) = parse(to_http(responses.allow({"x-meshgate-tenant": "acme"})))
    names = [name for name, _ in answer.headers]
    assert names == ["x-meshgate-tenant", "content-length"]


def test_deny_keeps_its_status_headers_and_body() -> None:
    response = responses.deny(
        401, "token_expired", "expired", headers={"www-authenticate": 'Bearer realm="m"'}, openai=True
    )
    raw = to_http(response)
    (answer,) = parse(raw)
    assert answer.status == 401
    assert answer.header("content-type") == "application/json"
    assert answer.header("www-authenticate") == 'Bearer realm="m"'
    assert all(name != "connection" for name, _ in answer.headers)  # kept alive (a refused one closes: below)
    assert int(answer.header("content-length")) == len(answer.body)
    error = {"message": "expired", "type": "authentication_error", "param": None, "code": "token_expired"}
    assert json.loads(answer.body) == {"error": error}


def test_a_head_requests_answer_has_its_length_and_no_body() -> None:
    """Envoy sends the client's method; after the head of a HEAD's answer it reads no body, so bytes
    there would be read as the next answer on the connection."""
    response = responses.deny(401, "missing_credentials", "no credentials")
    full, head = to_http(response), to_http(response, head=True)
    assert head == full[: full.index(b"\r\n\r\n") + 4]
    assert int(dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:-2])["content-length"]) > 0


def test_answer_is_200_with_its_body() -> None:
    body = json.dumps({"object": "list", "data": [{"id": "llama", "note": "é"}]})
    (answer,) = parse(to_http(responses.answer(body)))
    assert answer.status == 200
    assert answer.body == body.encode()
    assert int(answer.header("content-length")) == len(body.encode())
    assert all(name != "x-envoy-auth-headers-to-remove" for name, _ in answer.headers)


# --- HttpCheckServer --------------------------------------------------------------------------------


Reply = Callable[[CheckInput], Awaitable[external_auth_pb2.CheckResponse]]


class FakeCheck:
    """Records each CheckInput and each on_unavailable call; answers with `reply` (default: an allow)."""

    def __init__(self, reply: Reply | None = None) -> None:
        self.seen: list[CheckInput] = []
        self.failures: list[tuple[str, Exception]] = []
        self.reply = reply
        self.server: HttpCheckServer | None = None

    async def __call__(self, req: CheckInput) -> bytes:
        self.seen.append(req)
        if self.reply is not None:
            return to_http(await self.reply(req), head=req.method == "HEAD")
        return to_http(responses.allow({"x-meshgate-user": req.path}), head=req.method == "HEAD")


@asynccontextmanager
async def serving(check: FakeCheck, *, max_body: int = 1 << 20) -> AsyncIterator[tuple[HttpCheckServer, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    port = sock.getsockname()[1]
    server = HttpCheckServer(
        check,
        max_body_bytes=lambda: max_body,
        on_unavailable=lambda why, exc: check.failures.append((why, exc)),
    )
    check.server = server
    await server.start(sock)
    try:
        yield server, port
    finally:
        await asyncio.wait_for(server.stop(), GUARD_S)


async def read_answers(reader: asyncio.StreamReader, n: int) -> list[Answer]:
    collector = _Collector()
    while len(collector.done) < n:
        data = await asyncio.wait_for(reader.read(65536), GUARD_S)
        assert data, f"EOF after {len(collector.done)} of {n} answers"
        collector.parser.feed_data(data)
    return collector.done


def exchange(
    check: FakeCheck, data: bytes, answers: int | None, *, max_body: int = 1 << 20
) -> tuple[list[Answer], HttpCheckServer]:
    """Sends `data` on one connection; reads `answers` answers, or with None all until the server closes."""

    async def scenario() -> tuple[list[Answer], HttpCheckServer]:
        async with serving(check, max_body=max_body) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            if answers is None:
                got = parse(await asyncio.wait_for(reader.read(), GUARD_S))
            else:
                got = await read_answers(reader, answers)
            writer.close()
            return got, server

    return asyncio.run(scenario())


def request(path: str = "/", body: bytes = b"", *, method: str = "POST", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: meshgate\r\n{extra}content-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def test_a_head_request_is_answered_without_a_body_and_the_next_one_follows() -> None:
    async def deny(req: CheckInput) -> external_auth_pb2.CheckResponse:
        return responses.deny(401, "missing_credentials", "no credentials")

    async def scenario() -> bytes:
        async with serving(FakeCheck(deny)) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request("/a", method="HEAD") + request("/b"))
            data = b""
            while data.count(b"HTTP/1.1 401") < 2 or not data.endswith(b"}"):
                chunk = await asyncio.wait_for(reader.read(65536), GUARD_S)
                assert chunk, data
                data += chunk
            writer.close()
            return data

    data = asyncio.run(scenario())
    head_answer, rest = data.split(b"\r\n\r\n", 1)
    assert b"content-length: " in head_answer and rest.startswith(b"HTTP/1.1 401")  # no body between
    (second,) = parse(rest)
    assert json.loads(second.body)["error"] == "missing_credentials"


def test_request_becomes_check_input() -> None:
    check = FakeCheck()
    body = b'{"model": "llama", "messages": []}'
    head = (
        "POST /v1/chat/completions?stream=1&x=%20 HTTP/1.1\r\n"
        "Host: gw\r\nAuthorization: Bearer t\r\nX-Forwarded-For: 10.0.0.9, 192.0.2.7\r\n"
        "X-Request-Id: req-1\r\nAccept: a/b\r\naccept: c/d\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    (answer,), _ = exchange(check, head.encode() + body, 1)
    assert answer.status == 200
    assert answer.header("x-meshgate-user") == "/v1/chat/completions?stream=1&x=%20"
    headers = {
        "host": "gw", "authorization": "Bearer t", "x-forwarded-for": "10.0.0.9, 192.0.2.7",
        "x-request-id": "req-1", "accept": "a/b,c/d", "content-type": "application/json",
        "content-length": str(len(body)),
    }  # fmt: skip
    expected = CheckInput(
        method="POST", path="/v1/chat/completions?stream=1&x=%20", headers=headers, body=body,
        source="192.0.2.7", request_id="req-1",
    )  # fmt: skip
    assert check.seen == [expected]


def test_keep_alive_answers_each_request_and_counts_them() -> None:
    check = FakeCheck()

    async def scenario() -> tuple[list[Answer], int, int]:
        async with serving(check) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request("/one", b"1"))
            first = await read_answers(reader, 1)
            writer.write(request("/two", method="GET"))
            second = await read_answers(reader, 1)
            writer.close()
            return first + second, server.started, server.in_flight

    answers, started, in_flight = asyncio.run(scenario())
    assert [a.header("x-meshgate-user") for a in answers] == ["/one", "/two"]
    assert [(r.method, r.body, r.source) for r in check.seen] == [("POST", b"1", ""), ("GET", b"", "")]
    assert (started, in_flight) == (2, 0)


def test_pipelined_answers_keep_request_order(monkeypatch: pytest.MonkeyPatch) -> None:
    second_started = asyncio.Event()
    in_flight_seen: list[int] = []
    held: list[bool] = []  # a flush ran while the fast answer was done and the slow one was not
    flush = http_module._Connection._flush

    def recorded(self: Any, done: object = None) -> None:
        pending = list(self._answers)
        held.append(len(pending) == 2 and pending[1].done() and not pending[0].done())
        flush(self, done)

    monkeypatch.setattr(http_module._Connection, "_flush", recorded)

    async def reply(req: CheckInput) -> external_auth_pb2.CheckResponse:
        if req.path == "/slow":
            await second_started.wait()  # done only after the second request is,
            await eventually(lambda: any(held))  # and after the fast answer's flush held it back
        else:
            assert check.server is not None
            in_flight_seen.append(check.server.in_flight)
            second_started.set()
        return responses.allow({"x-meshgate-user": req.path})

    check = FakeCheck(reply)
    answers, server = exchange(check, request("/slow") + request("/fast"), 2)
    assert [a.header("x-meshgate-user") for a in answers] == ["/slow", "/fast"]
    assert in_flight_seen == [2]
    assert (server.started, server.in_flight) == (2, 0)


def _refused(data: bytes) -> tuple[list[Answer], FakeCheck]:
    check = FakeCheck()
    answers, _ = exchange(check, data, None, max_body=16)  # read until the server closes
    return answers, check


BIG_BODY = request("/", b"x" * 100)  # over max_body=16
BIG_HEAD = request("/", extra="x-big: " + "a" * (MAX_HEAD_BYTES + 1) + "\r\nx-next: 1\r\n")
GARBAGE = b"NOT HTTP\r\n\r\n"
ENDLESS_HEADER = b"GET / HTTP/1.1\r\nx-big: " + b"a" * (MAX_HEAD_BYTES + 16)  # never terminated


@pytest.mark.parametrize("data", [BIG_BODY, BIG_HEAD, GARBAGE], ids=["body", "head", "garbage"])
def test_refused_request_is_answered_empty_and_closed_unchecked(data: bytes) -> None:
    answers, check = _refused(data)
    assert len(answers) == 1
    assert 400 <= answers[0].status < 500
    assert answers[0].body == b""
    assert answers[0].header("connection") == "close"
    assert check.seen == []


@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param(BIG_BODY, 413, id="body"),
        pytest.param(BIG_HEAD, 431, id="head"),
        pytest.param(ENDLESS_HEADER, 431, id="unterminated header"),
        pytest.param(GARBAGE, 400, id="garbage"),
    ],
)
def test_refusal_status(data: bytes, status: int) -> None:
    answers, _ = _refused(data)
    assert [a.status for a in answers] == [status]


def test_body_at_the_limit_is_checked() -> None:
    check = FakeCheck()
    (answer,), _ = exchange(check, request("/", b"x" * 16), 1, max_body=16)
    assert answer.status == 200
    assert [r.body for r in check.seen] == [b"x" * 16]


def test_refusal_after_a_good_request_comes_after_its_answer() -> None:
    answers, check = _refused(request("/ok") + GARBAGE)
    assert [a.status for a in answers] == [200, 400]
    assert [r.path for r in check.seen] == ["/ok"]


@pytest.mark.parametrize(
    ("error", "reason"), [(Unavailable("no policy"), "unavailable"), (RuntimeError("bug"), "internal")]
)
def test_check_failure_is_503_and_reported(error: Exception, reason: str) -> None:
    async def reply(req: CheckInput) -> external_auth_pb2.CheckResponse:
        raise error

    data = request("/a") + request("/b")  # the connection stays usable after a failure
    check = FakeCheck(reply)
    answers, server = exchange(check, data, 2)
    assert [(a.status, a.body, a.header("content-length")) for a in answers] == [(503, b"", "0")] * 2
    assert check.failures == [(reason, error), (reason, error)]
    assert (server.started, server.in_flight) == (2, 0)


def test_stop_closes_idle_connections_and_stops_accepting() -> None:
    check = FakeCheck()

    async def scenario() -> tuple[int, bytes]:
        async with serving(check) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request("/"))
            (answer,) = await read_answers(reader, 1)
            await asyncio.wait_for(server.stop(), GUARD_S)
            rest = await asyncio.wait_for(reader.read(), GUARD_S)
            writer.close()
            with pytest.raises(OSError):
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), GUARD_S)
            return answer.status, rest

    assert asyncio.run(scenario()) == (200, b"")
    assert len(check.seen) == 1


# --- the xds header lists ---------------------------------------------------------------------------

WHO = Identity(tenant="acme", user="alice", tier="gold", roles=("invoker",), credential="jwt:test")
TARGET = Target(kind="model", model="llama", version="v2", tokens=300)


def _respond(decision: Decision, *, openai: bool = False) -> external_auth_pb2.CheckResponse:
    response = responses.to_response(
        decision,
        client_headers=["x-meshgate-tenant", "x-meshgate-quota"],
        api_key_header="x-api-key",
        forward_authorization=False,
        openai=openai,
    )
    responses.add_decision_id(response, "d" * 16)
    return response


def test_allowed_headers_are_all_forwarded_upstream() -> None:
    response = _respond(Decision(code="ok", identity=WHO, target=TARGET))
    names = {h.header.key for h in response.ok_response.headers}
    assert {contract.MODEL_HEADER, contract.VERSION_HEADER, contract.DECISION_ID_HEADER} <= names
    assert names <= set(UPSTREAM_HEADERS)
    (answer,) = parse(to_http(response))
    assert answer.header(contract.VERSION_HEADER) == "v2"
    assert answer.header(contract.HTTP_METADATA_PREFIX + contract.ASKED_TOKENS_KEY) == "300"


@pytest.mark.parametrize("code", ["missing_credentials", "token_expired", "model_forbidden", "invalid_body"])
@pytest.mark.parametrize("openai", [False, True])
def test_denied_headers_all_reach_the_client(code: str, openai: bool) -> None:
    response = _respond(Decision.deny(code, "no", identity=WHO, target=TARGET), openai=openai)
    names = {h.header.key for h in response.denied_response.headers}
    assert contract.DECISION_ID_HEADER in names
    assert ("www-authenticate" in names) == (Decision(code=code).status == 401)
    assert names <= set(CLIENT_HEADERS) | {"www-authenticate"}


def test_metadata_headers_never_go_upstream() -> None:
    response = _respond(Decision(code="ok", identity=WHO, target=TARGET))
    keys = response.dynamic_metadata.fields[contract.EXTAUTHZ_METADATA].struct_value.fields.keys()
    metadata_headers = {contract.HTTP_METADATA_PREFIX + key for key in keys}
    assert {"tenant", "user", "tier", "model", "version", contract.ASKED_TOKENS_KEY} <= set(keys)
    assert not metadata_headers & set(UPSTREAM_HEADERS)
    (answer,) = parse(to_http(response))
    assert metadata_headers <= {name for name, _ in answer.headers}


def test_a_header_value_with_a_line_break_is_never_written() -> None:
    """Defence in depth: the decision never puts one there (users are printable, tenants and models the
    policy's); if it did, the answer is refused (a 503 from the server) rather than split."""
    with pytest.raises(ValueError, match="line break"):
        to_http(responses.allow({"x-meshgate-user": "alice\r\nx-meshgate-tenant: root"}))
