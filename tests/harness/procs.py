"""Real processes on free ports: start, wait for a condition with a deadline, stop by PID.

Every process writes stdout and stderr to one log file; every startup error carries its tail.
Nothing here sleeps as synchronisation: ``wait_until`` polls a predicate until a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = [
    "Proc",
    "StartupError",
    "child_env",
    "free_port",
    "http_get",
    "http_request",
    "tcp_open",
    "unexpected_exit",
    "wait_for_http",
    "wait_for_tcp",
    "wait_until",
]

T = TypeVar("T")

_POLL_S = 0.05
_log_serial = itertools.count(1)
_handed_out: set[int] = set()
# urllib honours http_proxy & co from the environment; the harness only talks to 127.0.0.1.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StartupError(RuntimeError):
    """A process did not reach a condition in time, or exited while we waited."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bound, then closed), below the kernel's ephemeral range.

    Below that range, because a process that binds port 0 (meshgate's servers in the tests, any
    outgoing connection's local port) gets a port from it: a port picked there could be taken between
    this pick and its use (it happened in CI: a gateway listener's port taken by meshgate's extauthz).
    Never the same port twice in one test session, so two ports picked back to back (a model server's
    REST and gRPC) cannot collide. Prefer port 0 plus a report of the bound port where the server can
    give one (Envoy listeners and admin, meshgate's ready file).
    """
    low = _ephemeral_low()
    for port in _candidates(low):
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port")


def _ephemeral_low() -> int | None:
    """The first port of the kernel's ephemeral range (Linux), None where it cannot be read."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _candidates(low: int | None) -> Iterator[int]:
    """Ports to try: random ones from 10000 to just below `low`, else (no room there) what port 0
    gives."""
    if low is not None and low - 10000 >= 1000:
        rng = random.Random(os.getpid() ^ time.monotonic_ns())
        for _ in range(10000):
            yield rng.randrange(10000, low)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            yield int(sock.getsockname()[1])


_watched: set[Proc] = set()
"""Started processes nobody has asked to end: any wait fails at once when one of them exits."""


def unexpected_exit() -> Proc | None:
    """A started process that exited although nothing here stopped or signalled it (None: none did).

    Ending a process on purpose goes through `Proc.stop`, `Proc.send_signal`, `Proc.kill` or
    `Proc.wait_exit`, which take it off the watch; a bare ``os.kill(proc.pid, ...)`` does not."""
    for proc in list(_watched):
        if not proc.alive():
            _watched.discard(proc)
            return proc
    return None


class Proc:
    """One child process, its argv, and a log file holding its stdout and stderr.

    ``start()`` may be called again after ``stop()`` (same argv, log appended); ``stop()`` signals only
    this PID: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. While it runs, every `wait_until`
    fails as soon as it exits unasked (see `unexpected_exit`).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}-{next(_log_serial)}.log"
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self.returncode}"
        return f"Proc({self.name!r}, pid={self.pid}, {state}, log={self.log_path})"

    def start(self) -> Proc:
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        with self.log_path.open("ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest only; we stop children
            )
        _watched.add(self)
        return self

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def describe_failure(self, lines: int = 40) -> str:
        status = "still running" if self.alive() else f"exited with {self.returncode}"
        return f"{self.name} (pid {self.pid}) {status}; last lines of {self.log_path}:\n{self.tail(lines)}"

    def send_signal(self, sig: int) -> None:
        """Signal this PID. A signal that may end it (anything but SIGHUP, SIGSTOP, SIGCONT) takes it off
        the watch: its exit is then expected."""
        if sig not in (signal.SIGHUP, signal.SIGSTOP, signal.SIGCONT):
            _watched.discard(self)
        if self.alive():
            assert self._popen is not None
            self._popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL this PID (an expected exit)."""
        self.send_signal(signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM this PID, wait up to ``timeout`` s, then SIGKILL. Returns the exit code."""
        popen = self._popen
        _watched.discard(self)
        if popen is None:
            return None
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=timeout)
        return popen.returncode

    def wait_exit(self, timeout: float) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        _watched.discard(self)
        return self._popen.wait(timeout=timeout)


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """In a test's event loop: let the loop run until ``predicate`` holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    what: str,
    proc: Proc | None = None,
    interval: float = _POLL_S,
) -> T:
    """Poll ``predicate`` until it returns a truthy value, which is returned.

    Raises StartupError after ``timeout`` seconds, or as soon as ``proc`` (or any other started process
    that nobody asked to end: `unexpected_exit`) exits, with the last exception the predicate raised and
    the tail of the dead process's log.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except Exception as exc:
            last_error = exc
        else:
            if result:
                return result
        if proc is not None and not proc.alive():
            raise StartupError(_message(f"{proc.name} exited while waiting for {what}", last_error, proc))
        dead = unexpected_exit()
        if dead is not None:
            raise StartupError(_message(f"{dead.name} exited while waiting for {what}", last_error, dead))
        if time.monotonic() >= deadline:
            raise StartupError(_message(f"timed out after {timeout:g}s waiting for {what}", last_error, proc))
        time.sleep(interval)  # polling interval, not synchronisation


def _message(headline: str, last_error: BaseException | None, proc: Proc | None) -> str:
    parts = [headline]
    if last_error is not None:
        parts.append(f"last error: {last_error!r}")
    if proc is not None:
        parts.append(proc.describe_failure())
    return "\n".join(parts)


def http_request(
    url: str,
    *,
    method: str = "GET",
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    """One HTTP request without proxies; returns (status, body) for any HTTP status.

    Connection errors (refused, reset, timeout) raise.
    """
    request = urllib.request.Request(url, method=method, data=data, headers=dict(headers or {}))
    try:
        with _NO_PROXY_OPENER.open(request, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def http_get(url: str, *, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET without proxies; returns (status, body) for any HTTP status, raises on connection errors."""
    return http_request(url, timeout=timeout)


def wait_for_http(
    url: str,
    timeout: float,
    *,
    proc: Proc | None = None,
    status: int = 200,
    body_contains: bytes | None = None,
) -> bytes:
    """Wait until GET ``url`` answers ``status`` (and its body contains ``body_contains``)."""

    def ready() -> bytes | None:
        code, body = http_get(url)
        if code != status:
            raise StartupError(f"HTTP {code}: {body[:200]!r}")
        if body_contains is not None and body_contains not in body:
            raise StartupError(f"body lacks {body_contains!r}: {body[:200]!r}")
        return body or b"<empty>"

    return wait_until(ready, timeout, what=f"GET {url} -> {status}", proc=proc)


def tcp_open(host: str, port: int, *, timeout: float = 1.0) -> bool:
    with socket.create_connection((host, port), timeout=timeout):
        return True


def wait_for_tcp(host: str, port: int, timeout: float, *, proc: Proc | None = None) -> None:
    """Wait until a TCP connect to host:port succeeds."""
    wait_until(lambda: tcp_open(host, port), timeout, what=f"TCP {host}:{port}", proc=proc)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment plus ``extra``, with PYTHONPATH leading to the repository root."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env
