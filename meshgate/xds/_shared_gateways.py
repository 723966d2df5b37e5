"""The gateways of every meshgate replica, shared through Redis (`meshgate serve --redis-url`).

Each replica sees only the gateways whose ADS stream it serves (`_gateways`); native quotas divide each
limit by the whole fleet's count (docs/native.md, "Quotas"). So every `period` seconds each replica
writes its gateways into one sorted set, each node id scored with its expiry (Redis's own clock plus
`ttl`: no replica's clock is trusted), drops the expired ones, and reads the rest: the gateways it
serves plus those the others wrote. A gateway that leaves a replica is removed at once; one whose
replica died expires after `ttl`.

When Redis does not answer, the last members read are kept for `ttl`, then only the local gateways
count (each gateway's share then grows: the bound in docs/native.md for several replicas applies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ._gateways import Gateways

__all__ = ["KEY", "SharedGateways"]

log = logging.getLogger("meshgate.xds")

KEY = "meshgate:xds:gateways"


class SharedGateways:
    """The union of this replica's gateways (`local`) and those other replicas wrote to Redis."""

    def __init__(
        self,
        client: Any,
        local: Gateways,
        on_change: Callable[[], None],
        *,
        period: float = 1.0,
        ttl: float = 5.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._local = local
        self._on_change = on_change
        self._period, self._ttl = period, ttl
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._remote: frozenset[str] = frozenset()
        self._read_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def members(self) -> tuple[str, ...]:
        return tuple(sorted(set(self._local.members()) | self._remote))

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self._sync(leaving=self._local.members())
        with contextlib.suppress(Exception):
            await self._client.aclose()  # (the client is this object's: XdsService got it for this)

    def left(self, node: str) -> None:
        """`node` left this replica: forget it in Redis now (another replica serving it writes it back)."""
        if self._task is not None:
            asyncio.get_running_loop().create_task(self._forget(node))

    async def _forget(self, node: str) -> None:
        with contextlib.suppress(Exception):
            await self._client.zrem(KEY, node)
        await self.refresh()

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._period)

    async def refresh(self) -> None:
        """Write this replica's gateways, read everyone's; `on_change` when the union changed."""
        before = self.members()
        try:
            self._remote = frozenset(await self._sync())
            self._read_at = self._clock()
            if self._failing:
                log.info("xds: gateways shared through Redis again")
            self._failing = False
        except Exception as exc:  # Redis away: keep the last view for ttl, then the local gateways only
            if not self._failing:
                log.warning(
                    "xds: the gateways of other replicas cannot be read from Redis: %s", type(exc).__name__
                )
            self._failing = True
            if self._clock() - self._read_at > self._ttl:
                self._remote = frozenset()
        if self.members() != before:
            self._on_change()

    async def _sync(self, *, leaving: tuple[str, ...] = ()) -> list[str]:
        seconds, micros = await self._client.time()
        now = seconds + micros / 1e6
        pipe = self._client.pipeline(transaction=False)
        mine = {node: now + self._ttl for node in self._local.members() if node not in leaving}
        if mine:
            pipe.zadd(KEY, mine)
        if leaving:
            pipe.zrem(KEY, *leaving)
        pipe.zremrangebyscore(KEY, "-inf", now)
        pipe.zrange(KEY, 0, -1)
        replies = await pipe.execute()
        return [m.decode() if isinstance(m, bytes) else str(m) for m in replies[-1]]
