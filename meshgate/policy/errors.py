"""Policy errors: each names the file, the line and the field path."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Issue", "PolicyError", "describe_value", "format_path"]

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """`("models", 0, "versions", 1, "weight")` -> `models[0].versions[1].weight`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "<document>"


def describe_value(value: object) -> str:
    """How an error message shows a value the document gave (mappings and lists by kind only)."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, tuple | list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


@dataclass(frozen=True, order=True)
class Issue:
    """One problem in a policy document."""

    source: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.path}: {self.message}"


class PolicyError(ValueError):
    """A policy document that cannot be used. `issues` holds every problem found, in line order."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues: tuple[Issue, ...] = tuple(sorted(set(issues)))
        super().__init__("\n".join(str(i) for i in self.issues))
