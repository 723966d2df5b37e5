"""The snapshot cache: the published snapshot, which ones proxies rejected, and who to wake.

Streams never read the policy; they ask `serving()` for the snapshot to converge to and register a
wake-up callback. A snapshot that any proxy NACKed is never served again; streams then converge to
the newest snapshot some proxy ACKed completely (so reconnecting Envoys get a known-good config),
or failing that the newest one nobody rejected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .snapshot import Snapshot

__all__ = ["SnapshotCache"]

log = logging.getLogger("meshgate.xds")

_HISTORY = 8


class SnapshotCache:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._current: Snapshot | None = None
        self._history: list[Snapshot] = []
        self._good: Snapshot | None = None
        self._rejected: set[str] = set()
        self._published_at: dict[str, float] = {}
        self._watchers: set[Callable[[], None]] = set()

    @property
    def current(self) -> Snapshot | None:
        """The last published snapshot (served unless some proxy rejected it)."""
        return self._current

    @property
    def last_good(self) -> Snapshot | None:
        """The newest snapshot that some proxy ACKed in full."""
        return self._good

    def publish(self, snapshot: Snapshot, *, since: float | None = None) -> None:
        """Serve `snapshot`; `since` (clock time of the policy change) starts its convergence timer."""
        if self._current is not None and snapshot.version == self._current.version:
            return
        self._current = snapshot
        self._history = [*self._history[-(_HISTORY - 1) :], snapshot]
        self._published_at.setdefault(snapshot.version, self._clock() if since is None else since)
        self._wake()

    def serving(self) -> Snapshot | None:
        """What streams converge to: the current snapshot unless rejected, else the last good one."""
        if self._current is not None and self._current.version not in self._rejected:
            return self._current
        if self._good is not None:
            return self._good
        return next((s for s in reversed(self._history) if s.version not in self._rejected), None)

    def rejected(self, version: str) -> bool:
        return version in self._rejected

    def reject(self, snapshot: Snapshot, reason: str) -> None:
        """A proxy NACKed part of `snapshot`: never serve it again."""
        if snapshot.version not in self._rejected:
            self._rejected.add(snapshot.version)
            log.error(
                "snapshot %s rejected by a proxy, serving %s: %s",
                snapshot.version,
                self._good.version if self._good else "nothing",
                reason,
            )
            self._wake()

    def converged(self, snapshot: Snapshot) -> float:
        """A proxy ACKed all of `snapshot`; returns seconds since it was published."""
        if snapshot.version not in self._rejected:
            self._good = snapshot
        return self._clock() - self._published_at.get(snapshot.version, self._clock())

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` after every change; returns the function that stops it."""
        self._watchers.add(wake)
        return lambda: self._watchers.discard(wake)

    def _wake(self) -> None:
        for wake in list(self._watchers):
            wake()
