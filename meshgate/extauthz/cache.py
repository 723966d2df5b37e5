"""A bounded LRU of decisions. Each entry carries its own expiry (never past the token's exp)."""

from __future__ import annotations

from collections import OrderedDict

from .request import Decision

__all__ = ["DecisionCache"]


class DecisionCache:
    __slots__ = ("_entries", "max_entries")

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[float, Decision]] = OrderedDict()

    def get(self, key: bytes, now: float) -> Decision | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, decision = entry
        if now >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return decision

    def put(self, key: bytes, decision: Decision, expires: float) -> None:
        if self.max_entries <= 0:
            return
        self._entries[key] = (expires, decision)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
