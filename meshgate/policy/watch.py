"""The one reload pipeline of `meshgate serve`: every file input, one watcher, one worker thread.

Inputs are the policy file, the envoyproxy/ratelimit config directory and the certificate files the
policy names. A change to any of them (a file event, or SIGHUP for all) goes through the same steps:

1. **Settle.** The input's files are read (bytes and stat), and read again `settle` seconds later; the
   two reads must be equal, else the wait starts over. A file being written in place (`>`, a copy, an
   editor saving in chunks) is never caught half-way unless its writer stalls for `settle` seconds.
2. **Prepare** (parse + compile) in a worker thread, never on the event loop that serves calls. A
   rejected input is logged and counted by the input itself; the live configuration stays.
3. **Check** that the files still read the same as in step 1 (else back to step 1: what was parsed is
   already stale).
4. **Commit** on the event loop: only the atomic swap of the compiled artifacts runs there.

Inputs are processed one at a time, in the order given (the policy first), so a compile never sees
another input's half-committed state.

Besides file events, every `resync` seconds each input is read and compared with what the pipeline last
saw (from `run()` on): a change the watcher missed (one made before its inotify watch was armed, just
after start; a filesystem that sends no events) is reloaded all the same, at most `resync` late.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import watchfiles

from .load import MAX_POLICY_BYTES

__all__ = ["FileState", "FilesInput", "Input", "Paths", "Reloader", "read_files"]

log = logging.getLogger("meshgate.reload")

Commit = Callable[[], None]
T = TypeVar("T")

SWITCH_INTERVAL = 0.0001
"""Seconds between GIL hand-overs while a reload compiles (the interpreter's default is 0.005)."""

DEFAULT_RESYNC = 2.0
"""Seconds between two reads of every input that catch changes no file event reported."""

DEFAULT_SETTLE = 1.0
"""Seconds an input's bytes must stay unchanged before they are parsed (`--reload-settle`)."""


MAX_READ_BYTES = MAX_POLICY_BYTES + 1
"""The most of a watched file read: one byte past the largest policy, which is then refused as too
large (a file named by mistake, /dev/zero, is not read without end)."""


@dataclass(frozen=True)
class FileState:
    """One file as read: its identity and size/mtime (None if missing), and its bytes (at most
    MAX_READ_BYTES); `error` says why a file could not be read."""

    path: str
    stat: tuple[int, int, int, int] | None
    data: bytes | None
    error: str = ""

    @classmethod
    def read(cls, path: Path) -> FileState:
        try:
            with path.open("rb") as f:
                s = os.fstat(f.fileno())
                data = f.read(MAX_READ_BYTES)
        except OSError as exc:
            return cls(str(path), None, None, exc.strerror or type(exc).__name__)
        return cls(str(path), (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns), data)


def read_files(files: Iterable[Path], directories: Iterable[Path] = ()) -> tuple[FileState, ...]:
    """The state of `files` and of every regular file directly in `directories` (names sorted)."""
    paths = list(files)
    for directory in directories:
        with contextlib.suppress(OSError):
            paths += sorted(p for p in directory.iterdir() if p.is_file())
    return tuple(FileState.read(p) for p in paths)


@dataclass(frozen=True)
class Paths:
    """What an input watches: some files, and directories whose every direct entry concerns it.

    A Kubernetes ConfigMap or Secret volume updates by swapping its `..data` symlink: such a swap in the
    directory of a watched file concerns that file too."""

    files: frozenset[Path] = field(default_factory=frozenset)
    directories: frozenset[Path] = field(default_factory=frozenset)

    @classmethod
    def of(cls, files: Iterable[str | Path] = (), directories: Iterable[str | Path] = ()) -> Paths:
        absolute = [Path(p).absolute() for p in files], [Path(d).absolute() for d in directories]
        return cls(frozenset(absolute[0]), frozenset(absolute[1]))

    def dirs(self) -> frozenset[Path]:
        """The directories to watch (not recursively)."""
        return frozenset(f.parent for f in self.files) | self.directories

    def concerns(self, path: Path) -> bool:
        path = path.absolute()
        if path in self.files or path.parent in self.directories:
            return True
        return path.name.startswith("..data") and any(f.parent == path.parent for f in self.files)


class Input(Protocol):
    """One source of configuration in the pipeline. `read` and `prepare_state` run in the worker thread."""

    name: str

    def paths(self) -> Paths:
        """What to watch; asked again after every commit (the certificate files follow the policy)."""
        ...

    def read(self) -> object:
        """The input's current state (compared with ==): its files' bytes and stats."""
        ...

    def prepare_state(self, state: Any) -> Commit | None:
        """Parse and compile `state` (what `read` returned): the commit that swaps it in, or None when
        there is nothing to apply (unchanged, or rejected: logged and counted here)."""
        ...


class FilesInput:
    """An input whose `prepare` reads its files itself (the ratelimit directory, certificates). Files
    that read as they did when last committed are not prepared again (a SIGHUP, an event on a file
    beside them)."""

    def __init__(self, name: str, paths: Callable[[], Paths], prepare: Callable[[], Commit | None]) -> None:
        self.name = name
        self._paths = paths
        self._prepare = prepare
        self._committed: object = None

    def paths(self) -> Paths:
        return self._paths()

    def read(self) -> tuple[FileState, ...]:
        paths = self._paths()
        return read_files(sorted(paths.files), sorted(paths.directories))

    def prepare_state(self, state: object) -> Commit | None:
        paths = self._paths()
        if state == self._committed or not (paths.files or paths.directories):
            return None
        commit = self._prepare()
        if commit is None:
            return None

        def commit_and_remember() -> None:
            commit()
            self._committed = state

        return commit_and_remember


class Reloader:
    """Runs the pipeline (see the module doc) for `inputs`, in their order. `request()` asks for a reload
    (SIGHUP: every input); `run()` watches the files (unless `watch` is False) and reloads until `stop()`.
    """

    def __init__(
        self,
        inputs: Sequence[Input],
        *,
        settle: float = DEFAULT_SETTLE,
        watch: bool = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        freeze_gc: bool = False,
        resync: float = DEFAULT_RESYNC,
    ) -> None:
        if settle < 0:
            raise ValueError(f"settle must be >= 0, got {settle}")
        if resync < 0:
            raise ValueError(f"resync must be >= 0 (0: off), got {resync}")
        self.resync = resync
        self._seen: dict[str, object] = {}
        self.inputs = list(inputs)
        self.settle = settle
        self.freeze_gc = freeze_gc
        self.watch = watch
        self._sleep = sleep
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._rewatch = asyncio.Event()
        self._stopping = False
        self._watched: frozenset[Path] = frozenset()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshgate-reload")
        self._tasks: list[asyncio.Task[None]] = []
        self.cycles = 0
        """Completed reload cycles (each processed every input that was asked for)."""
        self.resyncs = 0
        """Completed resync passes (each read every input once)."""

    # --- control --------------------------------------------------------------------------------
    def request(self, *names: str) -> None:
        """Reload these inputs (all when none is named) once they settle. Safe from a signal handler."""
        self._dirty.update(names or [i.name for i in self.inputs])
        self._wake.set()

    async def run(self) -> None:
        """Start the watcher, the resync reads and the reload loop; returns once every input has been
        read as it is now (what later reads are compared with). They run until `stop`."""
        for inp in self.inputs:
            self._seen[inp.name] = await self._in_worker(inp.read)
        self._tasks.append(asyncio.create_task(self._reload_loop(), name="meshgate-reload"))
        if self.watch:
            self._tasks.append(asyncio.create_task(self._watch_loop(), name="meshgate-watch"))
        if self.resync > 0:
            self._tasks.append(asyncio.create_task(self._resync_loop(), name="meshgate-resync"))

    async def stop(self) -> None:
        self._stopping = True
        self._rewatch.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- the pipeline ---------------------------------------------------------------------------
    async def _reload_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for inp in self.inputs:
                if inp.name in self._dirty:
                    self._dirty.discard(inp.name)  # an event from now on asks again
                    try:
                        await self.reload(inp)
                    except Exception:  # never let one bad input stop the pipeline
                        log.exception("%s: reload failed; the live configuration stays", inp.name)
            self.cycles += 1
            self._check_watched()

    async def reload(self, inp: Input) -> bool:
        """Settle, prepare off the loop, check, commit on the loop. True when something was committed."""
        state = await self._in_worker(inp.read)
        self._seen[inp.name] = state  # what a resync compares with, even if what follows fails
        return await self._settle_and_apply(inp, state)

    async def _settle_and_apply(self, inp: Input, state: object) -> bool:
        """The steps after the first read; `_seen` follows every later read that is acted on."""
        while True:
            if self.settle > 0:
                await self._sleep(self.settle)
                again = await self._in_worker(inp.read)
                if again != state:
                    log.info("%s: still changing; waiting until it reads the same for %gs",
                             inp.name, self.settle)
                    state = self._seen[inp.name] = again
                    continue
            started = time.perf_counter()
            commit = await self._compile(inp, state)
            if commit is None:
                return False
            again = await self._in_worker(inp.read)
            if again != state:
                log.info("%s: changed while it was being compiled; waiting for it to settle", inp.name)
                state = self._seen[inp.name] = again
                continue
            prepared = time.perf_counter()
            commit()
            log.info("%s: parsed and compiled in %.0f ms (worker thread), swapped in %.1f ms (event loop)",
                     inp.name, (prepared - started) * 1000, (time.perf_counter() - prepared) * 1000)
            return True

    async def _compile(self, inp: Input, state: object) -> Commit | None:
        """`inp.prepare_state(state)` in the worker thread, so that the event loop keeps serving:

        - the interpreter hands the GIL to a waiting thread every SWITCH_INTERVAL instead of every 5 ms,
          so the loop, woken by a call, waits at most that long for the compile to let it run;
        - with `freeze_gc`, the cyclic GC is off meanwhile, and what is alive afterwards is frozen
          (`gc.freeze()`, as `meshgate serve` does at start): a full collection of a large policy's
          objects holds the GIL for 0.1-0.5 s (measured with 1000 models), and a reload leaves no
          cyclic garbage to collect (tests/unit/test_policy_reload.py). Objects frozen are still freed
          by reference counting when the next reload replaces them.
        """
        previous = sys.getswitchinterval()
        sys.setswitchinterval(min(previous, SWITCH_INTERVAL))
        collecting = self.freeze_gc and gc.isenabled()
        if collecting:
            gc.disable()
        try:
            return await self._in_worker(inp.prepare_state, state)
        finally:
            sys.setswitchinterval(previous)
            if collecting:
                gc.freeze()
                gc.enable()

    async def _in_worker(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- the watcher ----------------------------------------------------------------------------
    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync)  # a period, not a synchronisation
            for inp in self.inputs:
                if inp.name in self._dirty:
                    continue
                try:
                    state = await self._in_worker(inp.read)
                except Exception:
                    log.exception("%s: cannot read it to look for changes", inp.name)
                    continue
                if state != self._seen.get(inp.name):
                    log.info("%s: changed without a file event; reloading", inp.name)
                    self.request(inp.name)
            self.resyncs += 1

    def _dirs(self) -> frozenset[Path]:
        return frozenset(d for inp in self.inputs for d in inp.paths().dirs())

    def _check_watched(self) -> None:
        if self.watch and self._dirs() != self._watched:
            self._rewatch.set()  # the watcher restarts on the new set of directories

    async def _watch_loop(self) -> None:
        while not self._stopping:
            self._rewatch.clear()
            self._watched = self._dirs()
            existing = sorted(str(d) for d in self._watched if d.is_dir())
            for missing in sorted(str(d) for d in self._watched if not d.is_dir()):
                log.warning("cannot watch %s: not a directory (SIGHUP still reloads)", missing)
            if not existing:
                await self._rewatch.wait()
                continue
            async for changes in watchfiles.awatch(
                *existing, stop_event=self._rewatch, debounce=50, step=50, recursive=False
            ):
                self._on_changes(changes)

    def _on_changes(self, changes: Collection[tuple[watchfiles.Change, str]]) -> None:
        names = [
            inp.name
            for inp in self.inputs
            if any(inp.paths().concerns(Path(path)) for _, path in changes)
        ]
        if names:
            self.request(*names)
