"""One pipelined RESP connection to one Redis server, shared by every concurrent call.

RESP replies come back in the order commands were sent, so concurrent ShouldRateLimit calls queue
their command and wait for their own reply: no connection pool, no per-call checkout.

Writes are pipelined automatically: while a written batch waits for its replies, new commands queue,
and they go out together, in one write, as soon as the last reply of that batch arrives (an idle
connection writes at the end of the current loop turn, adding no delay). When Redis is slower than
the calls arrive, a batch holds every call of one round trip: one read and one write per batch, not
per call, on both sides. A local Redis answers before the next call arrives, so batches stay near
one command; a pipeline `window` makes an idle connection hold its first command that long for
others to join it (written at once when `limit` commands are held): fewer writes, reads and
wake-ups on both sides under sustained load, up to `window` more latency for a call that finds the
connection idle.

The connection is an asyncio Protocol: hiredis parses the bytes in `data_received`, and each reply
resolves its caller's future there (no reader task to wake). Deadlines are kept by the connection,
not by each call: one timer, armed for the earliest deadline among the calls waiting, fails the calls
past theirs with TimeoutError (an `asyncio.timeout` per call costs a timer, a context manager and a
cancellation each). A broken connection fails every pending call, and the next call connects again.

A call that times out leaves its slot in the queue: its late reply is read, in order, and handed to
`on_late` with the tag the call was sent with (RedisStore takes back what a late script charged).
The connection is not replaced when calls time out: Redis runs whatever reached its socket whenever
it resumes, on an old connection or a new one alike, so a new connection per timed-out call would
only pile up more commands. Instead the connection is *stalled* from the first timeout until every
late reply is in: new calls fail at once (ConnectionError) without writing anything. A connection
stalled for `abandon_after` seconds (a peer that accepts bytes and never answers) is closed and the
next call connects again; TCP_USER_TIMEOUT closes one whose bytes go unacknowledged (a host gone).
"""

from __future__ import annotations

import asyncio
import collections
import math
import socket
from collections.abc import Callable
from typing import Any

import hiredis

__all__ = ["RespConnection", "RespError"]


class RespError(Exception):
    """An error reply from Redis (e.g. NOSCRIPT, WRONGTYPE)."""


def _pack_python(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


# One RESP command (str, bytes and int arguments). hiredis >= 2.1 writes the same bytes in C, about 3x
# faster than Python for a 5-descriptor EVALSHA (19 arguments).
pack: Callable[[tuple[Any, ...]], bytes] = getattr(hiredis, "pack_command", _pack_python)


class _Protocol(asyncio.Protocol):
    """The connection's socket end: hands what Redis sends, and the connection's loss, to the owner."""

    def __init__(self, owner: RespConnection) -> None:
        self.owner = owner
        self.parser = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.owner._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self, exc)


class RespConnection:
    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 6379, path: str | None = None,
        username: str | None = None, password: str | None = None, db: int = 0,
        window: float = 0.0, limit: int = 0, abandon_after: float = 10.0, user_timeout: float = 1.0,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.abandon_after = abandon_after  # seconds stalled before the connection is closed (see above)
        self.user_timeout = user_timeout  # TCP_USER_TIMEOUT, seconds (TCP only, where the OS has it)
        # called with (reply, tag) for each reply whose call had already timed out
        self.on_late: Callable[[Any, object], None] | None = None
        self._stalled_at: float | None = None  # loop time of the first timeout not yet answered
        self.window = window  # seconds an idle connection holds its first command; 0: this loop turn
        self.limit = limit  # a held batch of this many commands is written at once; 0: no limit
        self._hold: asyncio.TimerHandle | None = None  # the window's timer, while a batch is held
        self._auth = (username, password)
        self._db = db
        self._protocol: _Protocol | None = None  # the open connection, else None
        self._loop: asyncio.AbstractEventLoop | None = None
        # (future, deadline, tag) per command sent, in the order the replies will come
        self._pending: collections.deque[tuple[asyncio.Future[Any], float, object]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None  # armed while calls wait: at the earliest deadline
        self._timer_at = 0.0
        self._outgoing: list[bytes] = []  # commands not yet written
        self._unanswered = 0  # commands written whose replies have not come back
        self._flush_soon = False  # a _flush is scheduled for the end of this loop turn
        self._connecting: asyncio.Lock | None = None

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    async def call(self, *args: Any, deadline: float = math.inf, tag: object = None) -> Any:
        """Send one command and wait for its reply until `deadline` (the event loop's clock). Raises
        RespError, OSError, ConnectionError or TimeoutError."""
        if self._protocol is None:
            async with asyncio.timeout_at(None if deadline == math.inf else deadline):
                await self._connect(deadline)
        return await self.send(pack(args), deadline, tag)

    def send(
        self, command: bytes, deadline: float = math.inf, tag: object = None, *, stalled_too: bool = False
    ) -> asyncio.Future[Any]:
        """Queue one packed command (see `pack`) on the open connection (`connected`); the future of
        its reply, failed with TimeoutError at `deadline` (the event loop's clock). A late reply goes
        to `on_late` with `tag`. Raises ConnectionError while the connection is stalled (see the
        module doc), unless `stalled_too`: a command that must follow the late ones in order."""
        loop = self._loop
        if self._protocol is None or loop is None:
            raise ConnectionError("redis connection not open")
        if self._stalled_at is not None and not stalled_too:
            self._refuse(loop)
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((future, deadline, tag))
        self._outgoing.append(command)
        if not self._unanswered and not self._flush_soon:  # else the last reply of the batch flushes
            self._flush_soon = True
            if self.window and self.limit != 1:
                self._hold = loop.call_later(self.window, self._flush, self._protocol)
            else:
                loop.call_soon(self._flush, self._protocol)
        elif self._hold is not None and len(self._outgoing) >= self.limit > 0:
            self._flush(self._protocol)  # the held batch is full
        if deadline < self._timer_at or (self._timer is None and deadline != math.inf):
            self._arm(loop, deadline)
        return future

    def _refuse(self, loop: asyncio.AbstractEventLoop) -> None:
        """A stalled connection takes no new command; one stalled too long is closed (the next call
        connects again)."""
        assert self._stalled_at is not None
        waited = loop.time() - self._stalled_at
        if waited > self.abandon_after:
            self._drop(ConnectionError(f"redis did not answer for {waited:.1f}s: connection closed"))
            raise ConnectionError(f"redis did not answer for {waited:.1f}s: connection closed, reconnecting")
        raise ConnectionError("redis is not answering: calls timed out and their replies have not come")

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(when, self._expire, loop), when

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, 0.0

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer: fail the calls past their deadline (their slots stay: a late reply goes to
        `on_late`), mark the connection stalled, and arm again for the earliest deadline still ahead."""
        self._timer, self._timer_at = None, 0.0
        now, ahead, expired = loop.time(), math.inf, False
        for future, deadline, _ in self._pending:
            if future.done():
                continue
            if deadline <= now:
                future.set_exception(TimeoutError())
                expired = True
            else:
                ahead = min(ahead, deadline)
        if expired and self._stalled_at is None:
            self._stalled_at = now  # until the late replies are in (see _received)
        if ahead != math.inf:
            self._arm(loop, ahead)

    def _flush(self, protocol: _Protocol) -> None:
        if protocol is not self._protocol or protocol.transport is None:  # dropped since: callers failed
            return
        self._flush_soon = False
        if self._hold is not None:  # written before the window ends (the limit): no timer to come
            self._hold.cancel()
            self._hold = None
        if self._outgoing:
            self._unanswered += len(self._outgoing)
            data, self._outgoing = b"".join(self._outgoing), []
            protocol.transport.write(data)

    async def _connect(self, deadline: float) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None:
                return
            loop = asyncio.get_running_loop()
            protocol = _Protocol(self)
            if self.path:
                await loop.create_unix_connection(lambda: protocol, self.path)
            else:
                await loop.create_connection(lambda: protocol, self.host, self.port)
                _user_timeout(protocol, self.user_timeout)
            self._pending.clear()
            self._stalled_at = None
            self._loop, self._protocol = loop, protocol
            try:
                username, password = self._auth
                if password is not None:
                    auth = (username, password) if username else (password,)
                    await self.send(pack(("AUTH", *auth)), deadline)
                if self._db:
                    await self.send(pack(("SELECT", self._db)), deadline)
            except BaseException:
                self._drop(ConnectionError("redis handshake failed"))
                raise

    def _received(self, protocol: _Protocol, data: bytes) -> None:
        if protocol is not self._protocol:  # a dropped connection's last bytes
            return
        parser = protocol.parser
        pending = self._pending
        try:
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                future, _, tag = pending.popleft()
                self._unanswered -= 1
                if future.done():  # its caller timed out
                    if tag is not None and self.on_late is not None:
                        self.on_late(reply, tag)
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(RespError(str(reply)))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self._drop(ConnectionError(f"redis protocol error: {exc!r}"))
            return
        if self._stalled_at is not None and (not pending or not pending[0][0].done()):
            self._stalled_at = None  # every late reply is in: new calls may go
        if not self._unanswered and self._outgoing and not self._flush_soon:
            self._flush(protocol)  # the batch is answered: what queued meanwhile goes out now

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is self._protocol:
            self._drop(exc or ConnectionError("redis closed the connection"))

    def _drop(self, error: BaseException) -> None:
        """Forget the connection; fail whoever still waits on it."""
        protocol, self._protocol = self._protocol, None
        self._outgoing, self._unanswered, self._flush_soon, self._stalled_at = [], 0, False, None
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        self._disarm()
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        while self._pending:
            future = self._pending.popleft()[0]
            if not future.done():
                future.set_exception(ConnectionError(str(error)))

    @property
    def stalled(self) -> bool:
        return self._stalled_at is not None

    async def close(self) -> None:
        self._drop(ConnectionError("closed"))
        await asyncio.sleep(0)  # the transport's connection_lost runs on the next loop turn


def _user_timeout(protocol: _Protocol, seconds: float) -> None:
    """TCP_USER_TIMEOUT: the OS closes the connection when bytes sent stay unacknowledged that long."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    sock = protocol.transport.get_extra_info("socket") if protocol.transport is not None else None
    if option is not None and sock is not None and seconds > 0:
        sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))
