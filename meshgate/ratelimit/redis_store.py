"""Counters in Redis (single server, Sentinel or Cluster, chosen by URL), one round trip per request.

Every request runs one Lua script (EVALSHA) that reads all its counters, decides, and increments
them only if the request is admitted: all or nothing, atomic in Redis. A single server over TCP or a
unix socket is reached through one pipelined connection (`_resp.py`); TLS, Sentinel and Cluster go
through redis-py. Key layout:

    mg:{<tag>}:<domain>:<k1>=<v1>:<k2>=<v2>:<window seconds>:<window start, epoch seconds>

`<tag>` is the value of the descriptor's `tenant` entry (else its first `key=value`), so one tenant's
counters share a Redis Cluster slot and its request is one script on one node. Keys, values and
the domain are percent-encoded when they hold anything but letters, digits and `_ . -`. Counters
expire at the end of their window (sliding windows: after two windows).

URLs: `redis://[:password@]host:port/db`, `rediss://...` (TLS), `unix:///path.sock`;
`redis+sentinel://host:port[,host:port]/<service>[/db]`; `redis+cluster://host:port`.
Every call is bounded by `timeout` (default 50 ms); any failure raises StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from ._resp import RespConnection, RespError, pack
from .bounds import MIB, Budget, sizeof
from .store import Slot, StoreResult, StoreUnavailable

__all__ = ["LUA", "RedisStore", "redact"]

COMMANDS_BUDGET = 8 * MIB  # the packed EVALSHA kept per request (see _evalsha and bounds.py)

# KEYS: the current window's counter of each slot, in order, then the previous window's counter of
# each slot with a sliding window (weight > 0), in the same order: a fixed window sends its key once.
# ARGV[i]: slot i as "limit hits ttl weight enforce charge" (ttl: seconds until a new counter may go,
# counted on meshgate's clock, so a skewed Redis clock does not shorten it; weight per mille; enforce,
# charge 1/0): one argument per slot rather than six keeps the command short to build and to parse.
# One MGET reads every counter; a counter shared by several slots counts the hits of the earlier ones
# (store.py). Only an admitted request writes: INCRBY, and EXPIRE on a counter MGET did not find.
# Lean on purpose, Redis runs it for every request: numbers stay strings where Lua's arithmetic or
# Redis takes them as they are (callgrind on redis-server: about 20 % fewer instructions per call
# than a version that converted every field and kept four tables).
# Returns {admitted (1/0), used_1, ..., used_n}.
LUA = """
local n = #ARGV
local counts = redis.call('MGET', unpack(KEYS))
local result, earlier, previous, hits = {1}, {}, n, {}
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
  result[i + 1] = count
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


def redact(url: str) -> str:
    """The URL without its password, for logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


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
        try:
            command = self._evalsha(slots, now) if resp.connected else None
            if command is None:
                reply = await self._eval(*_keys_args(slots, now), deadline=deadline)
            else:
                try:
                    reply = await resp.send(command, deadline)
                except RespError as exc:
                    if not str(exc).startswith("NOSCRIPT"):
                        raise
                    self._sha = None  # the server restarted or was flushed: EVAL caches the script again
                    reply = await self._eval(*_keys_args(slots, now), deadline=deadline)
        except TimeoutError as exc:
            resp.drop_if_stale(self.timeout)
            raise self._unavailable(exc) from exc
        except (RespError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return StoreResult(reply[0] == 1, reply[1:])  # the script's integers

    def _evalsha(self, slots: Sequence[Slot], now: float) -> bytes | None:
        """The packed EVALSHA for `slots` (None before the script's SHA is known). The limiter hands in
        the same `slots` list for a request until one of its windows rolls, so the command is kept per
        (list, second): a repeated request costs a dict lookup, not a command to format and pack."""
        sha, second = self._sha, int(now)
        if sha is None:
            return None
        found = self._packed.get(id(slots))
        if found is not None and found[0] is slots and found[1] == second and found[2] == sha:
            return found[3]
        keys, args = _keys_args(slots, now)
        command = pack(("EVALSHA", sha, len(keys), *keys, *args))
        # kept for a list of slots (a tuple is a one-off: see Store), not for a sliding window (its
        # weight moves: no repeat); the entry holds `slots` (its id cannot be reused while the entry
        # lives) and their keys
        if type(slots) is list and not any(s.weight for s in slots) and self._packed_budget.admit(
            self._packed, sizeof(command) + 200 + 250 * len(slots)
        ):
            self._packed[id(slots)] = (slots, second, sha, command)
        return command

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
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._eval(*_keys_args(slots, now))
        except (TimeoutError, RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return StoreResult(reply[0] == 1, reply[1:])

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        if isinstance(exc, TimeoutError):
            return StoreUnavailable(f"redis {redact(self.url)}: no answer in {self.timeout:g}s")
        return StoreUnavailable(f"redis {redact(self.url)}: {type(exc).__name__}: {exc}")

    async def _command(self, *args: Any, deadline: float = math.inf) -> Any:
        if self._resp is not None:
            return await self._resp.call(*args, deadline=deadline)
        return await self._client.execute_command(*args)

    async def _eval(self, keys: list[str], args: list[str], deadline: float = math.inf) -> Any:
        """EVALSHA, else EVAL; both within `deadline` (the event loop's clock; _resp only)."""
        if self._sha is not None:
            try:
                return await self._command("EVALSHA", self._sha, len(keys), *keys, *args, deadline=deadline)
            except (NoScriptError, RespError) as exc:
                # redis-py raises NoScriptError (its message drops the NOSCRIPT prefix); _resp an
                # error reply that starts with it
                if isinstance(exc, RespError) and not str(exc).startswith("NOSCRIPT"):
                    raise
                # the server restarted or was flushed, or (Cluster) this node has not seen the
                # script yet: EVAL caches it there
                self._sha = None
        reply = await self._command("EVAL", LUA, len(keys), *keys, *args, deadline=deadline)
        self._sha = _sha1(LUA)
        return reply

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(max(self.timeout, 0.5)):
                await self._command("PING")
        except (RedisError, RespError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis {redact(self.url)}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._resp is not None:
            await self._resp.close()
        else:
            await self._client.aclose()


def _keys_args(slots: Sequence[Slot], now: float) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of the script (see LUA)."""
    keys = [s.key for s in slots]
    keys += [s.prev_key for s in slots if s.weight]
    second = int(now)
    args = [
        f"{s.limit} {s.hits} {max(1, s.expires - second)} {s.weight} {s.enforce:d} {s.charge:d}"
        for s in slots
    ]
    return keys, args


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
