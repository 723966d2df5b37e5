"""ext_authz over HTTP: the same Check as the gRPC service, answered to Envoy's `http_service` client.

Why (docs/extauthz.md, "Transports"): a gateway calls meshgate once per request; after idleness a
grpc.aio call costs ~1.45 ms to wake up through grpc's threads, a plain HTTP/1.1 answer on the event
loop ~0.5 ms (`bench/extauthz_transport_idle.py`). `gateway.ext_authz.transport: http` makes meshgate's
xds configure this transport; the decision, its cache, metrics, spans and audit line are the gRPC
service's own (`ExtAuthzService.check_http`); only the envelope differs:

- in: Envoy's authorization request, the client's method, path (with its query) and headers
  (`allowed_headers`: meshgate's xds forwards them all) and the buffered body, as they came;
- allowed: 200, the headers to set upstream, `x-envoy-auth-headers-to-remove` (Envoy's header for the
  headers to remove), and each dynamic metadata value as a `x-meshgate-md-<key>` header that Envoy stores
  as a string (`dynamic_metadata_from_headers`; contract.ASKED_TOKENS_HTTP reads the tokens);
- denied: the denial's own status, headers and body, which Envoy sends to the client as they are;
- an answer extauthz gives itself (OpenAI's model list, status 200) would read as "allowed": the gateway
  routes those paths to this server as their upstream instead, with ext_authz off (meshgate/xds), so the
  same answer reaches the client.
- no decision (no policy yet, an internal error): 503 with no body; Envoy's ext_authz reads any status
  of 500 or more from the server as an error and applies `failure_mode_allow` (default: refuse).

Parsing is httptools (llhttp, Node's parser: uvicorn's). Bounded: request line and headers together
`MAX_HEAD_BYTES`, the body the live policy's `gateway.ext_authz.max_request_bytes` (Envoy sends no more);
past either the connection gets 413/431 and is closed. Requests on one connection are answered in order.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools
from envoy.service.auth.v3 import external_auth_pb2

from meshgate import contract

from .bounds import LogLimiter, clip
from .request import CheckInput, Unavailable

__all__ = ["MAX_HEAD_BYTES", "HttpCheckServer", "to_http"]

log = logging.getLogger("meshgate.extauthz.http")
MAX_HEAD_BYTES = 64 << 10
"""Request line and headers of one authorization request (Envoy's own default limit is 60 KiB)."""
REMOVE_HEADER = "x-envoy-auth-headers-to-remove"
_BREAKS = ("\r", "\n", "\0")
_REASONS = {200: "OK", 400: "Bad Request", 413: "Payload Too Large", 431: "Request Header Fields Too Large"}


def to_http(response: external_auth_pb2.CheckResponse, *, head: bool = False) -> bytes:
    """The HTTP/1.1 answer Envoy's ext_authz `http_service` client reads as `response`. `head`: the
    request was a HEAD (Envoy sends the client's method): the answer has no body (its length stays)."""
    headers: list[tuple[str, str]] = []
    body = b""
    if response.HasField("ok_response"):
        status = 200
        ok = response.ok_response
        headers += [(h.header.key, h.header.value) for h in ok.headers]
        headers += [(h.header.key, h.header.value) for h in ok.response_headers_to_add]  # (to the client)
        if ok.headers_to_remove:
            headers.append((REMOVE_HEADER, ",".join(ok.headers_to_remove)))
        namespace = response.dynamic_metadata.fields.get(contract.EXTAUTHZ_METADATA)
        if namespace is not None:
            for key, value in sorted(namespace.struct_value.fields.items()):  # (the same order each time)
                text = value.string_value if value.HasField("string_value") else f"{value.number_value:.0f}"
                headers.append((contract.HTTP_METADATA_PREFIX + key, text))
    else:
        denied = response.denied_response
        status = int(denied.status.code)
        headers += [(h.header.key, h.header.value) for h in denied.headers]
        body = denied.body.encode()
    return _message(status, headers, body, keep_alive=True, head=head)


def _message(
    status: int, headers: list[tuple[str, str]], body: bytes, *, keep_alive: bool, head: bool = False
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if any(c in line for line in lines for c in _BREAKS):  # (the core never makes one: never split a head)
        raise ValueError("a header of the answer holds a line break or NUL")
    lines.append(f"content-length: {len(body)}")
    if not keep_alive:
        lines.append("connection: close")
    # (a HEAD's answer has no body: bytes after its head would be read as the next answer)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + (b"" if head else body)


class HttpCheckServer:
    """Serves `check` (ExtAuthzService.check_http: a request in, its HTTP/1.1 answer out, `to_http`)
    over HTTP/1.1 on the running event loop."""

    def __init__(
        self,
        check: Callable[[CheckInput], Any],
        *,
        max_body_bytes: Callable[[], int],
        on_unavailable: Callable[[str, Exception], None] = lambda reason, exc: None,
    ) -> None:
        self._check = check
        self._max_body = max_body_bytes
        self._on_unavailable = on_unavailable
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self.in_flight = 0
        self.started = 0
        self._refused = LogLimiter(log)

    async def start(self, sock: socket.socket) -> None:
        """Serve on `sock`, a bound, listening TCP socket."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)

    async def stop(self) -> None:
        """Stop accepting; close idle connections (Envoy opens new ones elsewhere)."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.close_when_idle()
        await self._server.wait_closed()
        self._server = None

    def refused(self, peer: str, why: str) -> None:
        self._refused.log(logging.WARNING, "authorization request refused from %s: %s", clip(peer), clip(why))

    async def answer(self, req: CheckInput) -> bytes:
        self.in_flight += 1
        self.started += 1
        try:
            answer: bytes = await self._check(req)
            return answer
        except Unavailable as exc:
            self._on_unavailable("unavailable", exc)
        except Exception as exc:
            self._on_unavailable("internal", exc)
        finally:
            self.in_flight -= 1
        return _message(503, [], b"", keep_alive=True)


class _Connection(asyncio.Protocol):
    """One connection from Envoy: httptools' callbacks fill one request at a time."""

    def __init__(self, server: HttpCheckServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._answers: deque[asyncio.Future[bytes]] = deque()
        self._closing = False
        self._in_head = True  # until httptools saw the whole head of the request being read
        self._head_fed = 0
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._head_bytes = 0
        self._body_bytes = 0
        self._limit = self._server._max_body()

    # --- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # (uvloop's is not an asyncio.Transport)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        self._transport = None
        for answer in self._answers:
            answer.cancel()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._in_head:  # (httptools reports a header only once it ends: count what is fed meanwhile)
            self._head_fed += len(data)
        try:
            self._parser.feed_data(data)
            if self._in_head and self._head_fed > MAX_HEAD_BYTES:
                raise _TooLarge(431, f"request head over {MAX_HEAD_BYTES} bytes")
        except _TooLarge as exc:
            self._fail(exc.status, str(exc))
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrade")
        except httptools.HttpParserCallbackError as exc:  # a callback raised: its exception is the context
            cause = exc.__context__
            if isinstance(cause, _TooLarge):
                self._fail(cause.status, str(cause))
            else:
                self._fail(400, f"malformed request: {exc}")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed request: {exc}")

    # --- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("utf-8", "replace")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old},{text}"

    def on_headers_complete(self) -> None:
        self._in_head = False

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limit:
            raise _TooLarge(413, f"body over {self._limit} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        headers = self._headers
        req = CheckInput(
            method=self._parser.get_method().decode("latin-1"),
            path=self._url.decode("utf-8", "replace"),
            headers=headers,
            body=b"".join(self._body),
            source=_client_address(headers),
            request_id=headers.get("x-request-id", ""),
        )
        self._in_head, self._head_fed = True, 0  # the next request's head
        answer = asyncio.ensure_future(self._server.answer(req))
        self._answers.append(answer)
        answer.add_done_callback(self._flush)

    # --- answers, in order ----------------------------------------------------------------------
    def _flush(self, _: object = None) -> None:
        while self._answers and self._answers[0].done():
            answer = self._answers.popleft()
            if answer.cancelled() or self._transport is None:
                continue
            self._transport.write(answer.result())
        if self._closing and not self._answers and self._transport is not None:
            self._transport.close()

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _TooLarge(431, f"request head over {MAX_HEAD_BYTES} bytes")

    def _fail(self, status: int, why: str) -> None:
        """Answer `status` after the answers owed, then close: the stream cannot be trusted past it."""
        self._server.refused(self._peer, why)
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        done.set_result(_message(status, [], b"", keep_alive=False))
        self._answers.append(done)
        self._closing = True
        self._flush()

    def close_when_idle(self) -> None:
        self._closing = True
        self._flush()


class _TooLarge(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _client_address(headers: dict[str, str]) -> str:
    """The client's address as the gateway saw it: Envoy appends it last to x-forwarded-for
    (`use_remote_address`) before ext_authz runs; the gRPC Check carries it as the source address."""
    forwarded = headers.get("x-forwarded-for", "")
    return forwarded.rsplit(",", 1)[-1].strip()
