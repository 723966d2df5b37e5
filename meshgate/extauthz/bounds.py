"""Byte bounds on what extauthz keeps and logs of client-chosen strings (docs/extauthz.md, "Bounds").

Every cache has a byte budget (the caches count their own bytes; `meshgate_extauthz_cache_bytes` shows
them); every client-chosen string that goes into a log line, a span or a denial message is clipped to
`LOGGED_STRING_BYTES` (`meshgate.clip`, the one rule of every server); error logs a client can cause
are rate-limited (`LogLimiter`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..clip import LOGGED_STRING_BYTES, clip

__all__ = [
    "DECISION_CACHE_BYTES",
    "DECISION_ENTRY_BYTES",
    "LOGGED_STRING_BYTES",
    "PATH_MEMO_BYTES",
    "PATH_MEMO_ENTRY_BYTES",
    "RESPONSE_ENTRY_BYTES",
    "RESPONSE_MEMO_BYTES",
    "LogLimiter",
    "clip",
]

PATH_MEMO_BYTES = 2 << 20
"""The path -> target memo (read before authentication)."""
PATH_MEMO_ENTRY_BYTES = 1024
"""A path whose entry would be larger is resolved every time, never kept (a long path is a rare one)."""

DECISION_CACHE_BYTES = 64 << 20
"""The decision cache, besides its `auth.decision_cache_entries` bound."""
DECISION_ENTRY_BYTES = 16 << 10
"""A decision larger than this (a huge model name, thousands of roles) is not cached."""

RESPONSE_MEMO_BYTES = 16 << 20
"""The serialized responses of cached decisions, by decision and client x-meshgate-* header names."""
RESPONSE_ENTRY_BYTES = 16 << 10
"""A response larger than this (many client x-meshgate-* headers) is built for its request only."""


class LogLimiter:
    """At most one line per `every` seconds for one kind of event a client can repeat at will (malformed
    requests, internal errors); the next line says how many were left out in between."""

    def __init__(
        self, logger: logging.Logger, *, every: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.every = every
        self._clock = clock
        self._next = float("-inf")
        self.suppressed = 0

    def log(self, level: int, message: str, *args: object, exc_info: BaseException | None = None) -> bool:
        """Log now (True) or count it for the next line (False)."""
        now = self._clock()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.every
        if self.suppressed:
            message += f" ({self.suppressed} more like this since the last such line, not logged)"
            self.suppressed = 0
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True
