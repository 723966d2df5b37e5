"""What each connected proxy was sent, ACKed and NACKed, per type: the client status meshgate reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..clip import clip
from ._types import short

__all__ = ["NodeStatus", "StatusBoard"]


@dataclass
class _TypeStatus:
    sent: str = ""
    acked: str = ""
    nacked: str = ""
    error: str = ""
    pushes: int = 0
    nacks: int = 0


@dataclass
class NodeStatus:
    """One stream's view of one node (a node that reconnects gets a fresh one)."""

    node: str
    protocol: str
    connected_at: float = field(default_factory=time.time)
    types: dict[str, _TypeStatus] = field(default_factory=dict)
    stream: Any = None
    """The live stream (meshgate.xds._stream.Stream) whose resources CSDS reports."""

    def _of(self, type_url: str) -> _TypeStatus:
        return self.types.setdefault(type_url, _TypeStatus())

    def sent(self, type_url: str, version: str) -> None:
        entry = self._of(type_url)
        entry.sent = version
        entry.pushes += 1

    def acked(self, type_url: str, version: str) -> None:
        self._of(type_url).acked = version

    def nacked(self, type_url: str, version: str, error: str) -> None:
        entry = self._of(type_url)
        entry.nacked, entry.error = version, error
        entry.nacks += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": clip(self.node),
            "protocol": self.protocol,
            "connected_at": self.connected_at,
            "types": {short(t): vars(entry).copy() for t, entry in sorted(self.types.items())},
        }


class StatusBoard:
    """Every connected stream's NodeStatus; `snapshot()` is what the admin/CLI reads."""

    def __init__(self) -> None:
        self._streams: dict[int, NodeStatus] = {}
        self._ids = iter(range(1, 1 << 62))

    def open(self, node: str, protocol: str) -> tuple[int, NodeStatus]:
        key = next(self._ids)
        self._streams[key] = NodeStatus(node, protocol)
        return key, self._streams[key]

    def close(self, key: int) -> None:
        self._streams.pop(key, None)

    def __len__(self) -> int:
        return len(self._streams)

    def snapshot(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self._streams.values()]

    def streams(self) -> list[NodeStatus]:
        return list(self._streams.values())
