"""Everything one test started, stopped in reverse order at teardown, with log tails for failure reports."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TypeVar

from tests.harness.procs import Proc

__all__ = ["Stack", "Stoppable"]


class Stoppable(Protocol):
    proc: Proc

    def stop(self, timeout: float = ...) -> int | None: ...


S = TypeVar("S", bound=Stoppable)


class Stack:
    """Register each started thing with ``add``; ``close`` stops them all (last started, first stopped)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._items: list[Stoppable] = []

    def add(self, item: S) -> S:
        self._items.append(item)
        return item

    @property
    def procs(self) -> list[Proc]:
        return [item.proc for item in self._items]

    def close(self) -> None:
        """Stop everything, even when one stop fails; then raise the first failure."""
        errors: list[BaseException] = []
        while self._items:
            item = self._items.pop()
            try:
                item.stop()
            except BaseException as exc:  # keep stopping the rest
                errors.append(exc)
        if errors:
            raise errors[0]

    def log_sections(self, lines: int = 30) -> list[tuple[str, str]]:
        return [(f"{proc.name} (pid {proc.pid}) {proc.log_path}", proc.tail(lines)) for proc in self.procs]
