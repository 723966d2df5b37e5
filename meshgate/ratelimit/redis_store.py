"""Counters in Redis (single server, Sentinel or Cluster, chosen by URL), one round trip per request.

Every request runs one Lua script (EVALSHA) that reads all its counters, decides, and increments
them only if the request is admitted: all or nothing, atomic in Redis. A single server over TCP or a
unix socket is reached through one pipelined connection (`_resp.py`); TLS, Sentinel and Cluster go
through redis-py. Key layout:

    mg:{<tag>}:<domain>:<k1>=<v1>:<k2>=<v2>:<window seconds>:<window start, epoch seconds>

`<tag>` is the value of the descriptor's `tenant` entry (else its first `key=value`), so one tenant's
counters share a Redis Cluster slot and its request is one script on one node (keys.py: encoding, and
long descriptors hashed). Counters expire at the end of their window (sliding: after two windows).

URLs: `redis://[:password@]host:port/db`, `rediss://...` (TLS), `unix:///path.sock`;
`redis+sentinel://host:port[,host:port]/<service>[/db]`; `redis+cluster://host:port`.
Every call is bounded by `timeout` (default 50 ms); any failure raises StoreUnavailable.

A call answered UNAVAILABLE is never charged later. Redis runs whatever reached its socket when it
resumes (a hung Redis, SIGSTOP), even from a connection closed meanwhile, so each script carries its
call's deadline on Redis's clock and charges nothing past it (`_deadline_ms`: the offset between the
clocks is learnt from the replies, a lower bound, so a script that runs after its caller gave up
always finds itself late). A script Redis ran in time but answered late (it hung in between) charged
a call answered UNAVAILABLE: on our own connection its late reply is read, and its hits taken back
(`_late`). redis-py (TLS, Sentinel, Cluster) drops a connection whose call timed out, so that last
case is not taken back there; on a Cluster the offset mixes the nodes' clocks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from ._resp import RespConnection, RespError, pack
from .bounds import MIB, Budget, sizeof
from .store import Slot, StoreResult, StoreUnavailable

__all__ = ["LUA", "TAKE_BACK", "RedisStore", "check_redis_url", "redact"]

log = logging.getLogger("meshgate.ratelimit")
_REDIS_ERRORS = (RedisError, RedisClusterException)
"""What redis-py raises for a store it cannot use (RedisClusterException, e.g. no node of a Cluster
reachable, is no RedisError: it ended the health probe, which then said `up` for ever)."""

COMMANDS_BUDGET = 8 * MIB  # the packed EVALSHA kept per request (see _evalsha and bounds.py)
_MARGIN = 0.002  # seconds off each sample of Redis's clock (a safety margin: samples are lower bounds)
_SAMPLE_EVERY = 8  # replies per sample of Redis's clock (a late one is always sampled)
_EPOCH = 32  # samples per epoch of the clock offset (samples older than two epochs are forgotten)

# KEYS: the current window's counter of each slot, in order, then the previous window's counter of
# each slot with a sliding window (weight > 0), in the same order: a fixed window sends its key once.
# ARGV[i]: slot i as "limit hits ttl weight enforce charge" (ttl: seconds until a new counter may go,
# counted on meshgate's clock, so a skewed Redis clock does not shorten it; weight per mille; enforce,
# charge 1/0): one argument per slot rather than six keeps the command short to build and to parse.
# The last ARGV: the call's deadline, milliseconds on Redis's clock: past it, Redis hung or was slow
# and the call was answered UNAVAILABLE, so the script charges nothing ({-1, now}).
# One MGET reads every counter; a counter shared by several slots counts the hits of the earlier ones
# (store.py). Only an admitted request writes: INCRBY, and EXPIRE on a counter MGET did not find.
# Lean on purpose, Redis runs it for every request: numbers stay strings where Lua's arithmetic or
# Redis takes them as they are (callgrind on redis-server: about 20 % fewer instructions per call
# than a version that converted every field and kept four tables).
# Returns {admitted (1/0), now (ms, Redis's clock), used_1, ..., used_n}.
LUA = """
local n = #ARGV - 1
local now = redis.call('TIME')
now = now[1] * 1000 + math.floor(now[2] / 1000)
if now > tonumber(ARGV[n + 1]) then return {-1, now} end
local counts = redis.call('MGET', unpack(KEYS))
local result, earlier, previous, hits = {1, now}, {}, n, {}
for i = 1, n do
  -- ttl (the third field) is read only for a new counter, below
  local limit, h, weight, enforce, charge =
    string.match(ARGV[i], '^(%d+) (%d+) %d+ (%d+) ([01]) ([01])$')
  local key = KEYS[i]
  local count = tonumber(counts[i] or 0) + (earlier[key] or 0)
  if weight ~= '0' then
    previous = previous + 1
    count = count + math.floor(tonumber(counts[previous] or 0) * weight / 1000)
  end
  result[i + 2] = count
  if enforce == '1' and count + h > tonumber(limit) then result[1] = 0 end
  if charge == '1' and h ~= '0' then
    hits[i] = h
    earlier[key] = (earlier[key] or 0) + h
  end
end
if result[1] == 1 then
  for i = 1, n do
    if hits[i] then
      redis.call('INCRBY', KEYS[i], hits[i])
      -- a new counter gets its TTL (an older one has it already)
      if not counts[i] then redis.call('EXPIRE', KEYS[i], string.match(ARGV[i], '^%d+ %d+ (%d+)')) end
    end
  end
end
return result
"""

# A late reply said its script charged a call answered UNAVAILABLE: take the hits back (KEYS: the
# charged counters, ARGV: their hits); a counter gone meanwhile stays gone, one back at zero goes.
TAKE_BACK = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('DECRBY', KEYS[i], ARGV[i]) <= 0 then
    redis.call('DEL', KEYS[i])
  end
end
return #KEYS
"""


def redact(url: str) -> str:
    """The URL without its password, for logs and reprs: in the user info (`redis://u:pw@host`) or in
    the query (`?password=pw`, which redis-py also reads)."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k.lower() == "password" for k, _ in query):
        hidden = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in query], safe="*")
        head = url.partition("?")[0]
        url = f"{head}?{hidden}" + (f"#{parts.fragment}" if parts.fragment else "")
    return url


def check_redis_url(url: str) -> None:
    """ValueError naming `--redis-url` (password hidden) when `url` is no Redis URL meshgate can use;
    nothing is connected (the clients are built, not opened)."""
    try:
        _client(url, timeout=1.0)
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"--redis-url {redact(url)}: {exc}") from None


def _client(url: str, timeout: float) -> Any:
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in ("redis+cluster", "rediss+cluster"):
        plain = urlunsplit(parts._replace(scheme=scheme.split("+")[0]))
        return RedisCluster.from_url(plain, **options)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        hosts = [h.rsplit(":", 1) for h in parts.netloc.rsplit("@", 1)[-1].split(",")]
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError(f"{redact(url)}: a sentinel URL names the service: redis+sentinel://host:port/service")
        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            [(h, int(p)) for h, p in hosts], password=parts.password, ssl=scheme.startswith("rediss"),
            sentinel_kwargs={"password": parts.password, **options}, **options,
        )
        return sentinel.master_for(path[0], db=int(path[1]) if len(path) > 1 else 0)
    return aioredis.Redis.from_url(url, **options)


def _resp(url: str, window: float = 0.0, limit: int = 0) -> RespConnection | None:
    """A single plain-TCP or unix-socket server: our pipelined connection. Others (TLS, Sentinel,
    Cluster): None, and redis-py does the work."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "unix") or parse_qs(parts.query):
        return None
    path = [p for p in parts.path.split("/") if p]
    if parts.scheme == "unix":
        return RespConnection(
            path=parts.path, username=parts.username or None, password=parts.password,
            window=window, limit=limit,
        )
    db = int(path[0]) if path else 0
    return RespConnection(
        host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None, db=db,
        window=window, limit=limit,
    )


class RedisStore:
    """The Redis backend of Store. Build with `RedisStore(url, timeout=0.05)`; `close()` at the end.
    `pipeline_window` and `pipeline_limit`: see RespConnection (a single server only)."""

    def __init__(
        self, url: str, *, timeout: float = 0.05, pipeline_window: float = 0.0, pipeline_limit: int = 0
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._resp = _resp(url, pipeline_window, pipeline_limit)
        self._client: Any = None if self._resp is not None else _client(url, timeout)
        self._sha: str | None = None
        # id(slots) -> (slots, second, sha, packed EVALSHA): see _evalsha
        self._packed: dict[int, tuple[Sequence[Slot], int, str, bytes]] = {}
        self._packed_budget = Budget("commands", COMMANDS_BUDGET)
        self.budgets = (self._packed_budget,)
        self.cluster = isinstance(self._client, RedisCluster)
        # Redis's clock minus the monotonic clock (the event loop's), seconds: a lower bound (see
        # _deadline_ms), first a guess (the wall clock's), replaced by the first reply's sample
        self._offset, self._learnt = time.time() - time.monotonic(), False
        self._offset_max, self._offset_left, self._sample_in = -math.inf, _EPOCH, 0
        self._tail: tuple[int, bytes] = (0, b"")  # the last deadline argument packed, and its bytes
        self.taken_back = 0  # late replies whose hits were taken back (see _late)
        if self._resp is not None:
            self._resp.on_late = self._late

    def __repr__(self) -> str:
        return f"RedisStore({redact(self.url)}, timeout={self.timeout})"

    async def apply(self, slots: Sequence[Slot], now: float) -> StoreResult:
        resp = self._resp
        if resp is None:  # redis-py: TLS, Sentinel, Cluster
            if self.cluster and len({s.tag for s in slots}) > 1:
                return await self._apply_per_tag(slots, now)
            return await self._apply_client(slots, now)
        # our connection: it keeps the deadline (no timer of our own), and the call is awaited right
        # here (no coroutine in between): the hot path
        deadline = asyncio.get_running_loop().time() + self.timeout
        until = int((deadline + self._offset) * 1000)  # see _deadline_ms
        try:
            command = self._evalsha(slots, now, until) if resp.connected else None
            if command is None:
                reply = await self._eval(*_keys_args(slots, now, until), deadline=deadline, tag=slots)
            else:
                try:
                    reply = await resp.send(command, deadline, slots)
                except RespError as exc:
                    if not str(exc).startswith("NOSCRIPT"):
                        raise
                    self._sha = None  # the server restarted or was flushed: EVAL caches the script again
                    reply = await self._eval(*_keys_args(slots, now, until), deadline=deadline, tag=slots)
        except (TimeoutError, RespError, OSError) as exc:
            raise self._unavailable(exc) from exc
        admitted = reply[0]  # _result, inline for the calls that take no sample (7 in 8)
        if admitted < 0 or self._sample_in <= 1:
            return self._result(reply)
        self._sample_in -= 1
        return StoreResult(admitted == 1, reply[2:])

    def _deadline_ms(self, deadline: float) -> int:
        """`deadline` (the event loop's clock, monotonic) on Redis's clock, in ms: the script charges
        nothing past it. The offset is the highest of the recent samples `Redis's time in a reply - the
        monotonic clock when the reply was read - _MARGIN`, each a lower bound of the true offset
        (Redis ran the script before its reply was read; the loop's clock never reads ahead of the
        monotonic one, uvloop's runs up to 1 ms behind), so a script Redis runs after its caller gave
        up finds itself late. Before the first reply, the clocks are taken to agree."""
        return int((deadline + self._offset) * 1000)

    def _result(self, reply: Any) -> StoreResult:
        """The script's reply; every `_SAMPLE_EVERY`th reply's Redis time (and a late one's) is a
        sample of the clock offset (see _deadline_ms)."""
        admitted = reply[0]
        self._sample_in -= 1
        if self._sample_in <= 0 or admitted < 0:
            self._sample(reply[1])
            if admitted < 0:
                raise StoreUnavailable(f"redis {redact(self.url)}: the script ran past its call's deadline")
        return StoreResult(admitted == 1, reply[2:])

    def _sample(self, redis_ms: int) -> None:
        sample = redis_ms / 1000 - time.monotonic() - _MARGIN
        self._sample_in = _SAMPLE_EVERY
        if sample > self._offset or not self._learnt:
            self._offset, self._learnt = sample, True
        if sample > self._offset_max:
            self._offset_max = sample
        self._offset_left -= 1
        if not self._offset_left:  # a new epoch: older samples go (Redis's clock may have stepped back)
            self._offset, self._offset_max, self._offset_left = self._offset_max, -math.inf, _EPOCH

    def _late(self, reply: Any, tag: object) -> None:
        """The reply of a script whose call had timed out (answered UNAVAILABLE). If it charged (Redis
        ran it in time, then hung before answering), take its hits back: the command goes in the
        connection's order, ahead of any later call."""
        if not isinstance(reply, list) or not reply or reply[0] != 1 or self._resp is None:
            return
        charged = [s for s in cast(Sequence[Slot], tag) if s.charge and s.hits > 0]
        if not charged:
            return
        keys, hits = [s.key for s in charged], [s.hits for s in charged]
        deadline = asyncio.get_running_loop().time() + max(1.0, self.timeout)
        command = pack(("EVAL", TAKE_BACK, len(keys), *keys, *hits))
        self._resp.send(command, deadline, stalled_too=True).add_done_callback(self._taken_back)

    def _taken_back(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.taken_back += 1
            log.info("redis %s: took back the hits of a script that ran in time but answered late",
                     redact(self.url))
            return
        log.warning("redis %s: could not take back the hits of a call answered UNAVAILABLE: %r",
                    redact(self.url), None if future.cancelled() else future.exception())

    def _evalsha(self, slots: Sequence[Slot], now: float, until: int) -> bytes | None:
        """The packed EVALSHA for `slots` (None before the script's SHA is known). The limiter hands in
        the same `slots` list for a request until one of its windows rolls, so the command up to its
        deadline argument is kept per (list, second): a repeated request costs a dict lookup and the
        deadline's bytes, not a command to format and pack."""
        sha, second = self._sha, int(now)
        if sha is None:
            return None
        found = self._packed.get(id(slots))
        if found is not None and found[0] is slots and found[1] == second and found[2] == sha:
            prefix = found[3]
        else:
            keys, args = _keys_args(slots, now, 0)
            args[-1] = ""
            prefix = pack(("EVALSHA", sha, len(keys), *keys, *args))[:-6]  # without its "$0\r\n\r\n"
            # kept for a list of slots (a tuple is a one-off: see Store), not for a sliding window (its
            # weight moves: no repeat); the entry holds `slots` (its id cannot be reused while the
            # entry lives) and their keys
            if type(slots) is list and not any(s.weight for s in slots) and self._packed_budget.admit(
                self._packed, sizeof(prefix) + 200 + 250 * len(slots)
            ):
                self._packed[id(slots)] = (slots, second, sha, prefix)
        last, tail = self._tail
        if until != last:  # calls in the same millisecond share the deadline's bytes
            digits = str(until).encode()
            tail = (b"$13\r\n" if len(digits) == 13 else b"$%d\r\n" % len(digits)) + digits + b"\r\n"
            self._tail = (until, tail)
        return prefix + tail

    async def _apply_per_tag(self, slots: Sequence[Slot], now: float) -> StoreResult:
        """Redis Cluster, counters of several tags: one script per slot (all-or-nothing per tag)."""
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(slots):
            groups.setdefault(s.tag, []).append(i)
        used = [0] * len(slots)
        ok = True
        for indexes in groups.values():
            part = await self._apply_client([slots[i] for i in indexes], now)
            ok = ok and part.admitted
            for i, u in zip(indexes, part.used, strict=True):
                used[i] = u
        return StoreResult(ok, used)

    async def _apply_client(self, slots: Sequence[Slot], now: float) -> StoreResult:
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                reply = await self._eval(*_keys_args(slots, now, self._deadline_ms(deadline)))
        except (TimeoutError, *_REDIS_ERRORS, OSError) as exc:
            raise self._unavailable(exc) from exc
        return self._result(reply)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        if isinstance(exc, TimeoutError):
            return StoreUnavailable(f"redis {redact(self.url)}: no answer in {self.timeout:g}s")
        return StoreUnavailable(f"redis {redact(self.url)}: {type(exc).__name__}: {exc}")

    async def _command(self, *args: Any, deadline: float = math.inf, tag: object = None) -> Any:
        if self._resp is not None:
            return await self._resp.call(*args, deadline=deadline, tag=tag)
        return await self._client.execute_command(*args)

    async def _eval(
        self, keys: list[str], args: list[str], deadline: float = math.inf, tag: object = None
    ) -> Any:
        """EVALSHA, else EVAL; both within `deadline` (the event loop's clock; _resp only)."""
        if self._sha is not None:
            try:
                return await self._command(
                    "EVALSHA", self._sha, len(keys), *keys, *args, deadline=deadline, tag=tag
                )
            except (NoScriptError, RespError) as exc:
                # redis-py raises NoScriptError (its message drops the NOSCRIPT prefix); _resp an
                # error reply that starts with it
                if isinstance(exc, RespError) and not str(exc).startswith("NOSCRIPT"):
                    raise
                # the server restarted or was flushed, or (Cluster) this node has not seen the
                # script yet: EVAL caches it there
                self._sha = None
        reply = await self._command("EVAL", LUA, len(keys), *keys, *args, deadline=deadline, tag=tag)
        self._sha = _sha1(LUA)
        return reply

    async def ping(self) -> None:
        """PING within max(timeout, 0.5 s). Our connection keeps the deadline itself (a PING it fails
        stalls the connection like a script), redis-py's is bounded here."""
        deadline = asyncio.get_running_loop().time() + max(self.timeout, 0.5)
        try:
            async with asyncio.timeout_at(None if self._resp is not None else deadline):
                await self._command("PING", deadline=deadline)
        except (*_REDIS_ERRORS, RespError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis {redact(self.url)}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._resp is not None:
            await self._resp.close()
        else:
            await self._client.aclose()


def _keys_args(slots: Sequence[Slot], now: float, until: int) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of the script (see LUA), `until` the deadline (ms, Redis's clock)."""
    keys = [s.key for s in slots]
    keys += [s.prev_key for s in slots if s.weight]
    second = int(now)
    args = [
        f"{s.limit} {s.hits} {max(1, s.expires - second)} {s.weight} {s.enforce:d} {s.charge:d}"
        for s in slots
    ]
    args.append(str(until))
    return keys, args


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
