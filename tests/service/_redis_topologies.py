"""Real Redis Sentinel and Redis Cluster topologies for the rate limiter's store tests.

- ``SentinelTopology``: one master and one sentinel monitoring it as ``mymaster``;
  ``url`` is ``redis+sentinel://127.0.0.1:<sentinel port>/mymaster``.
- ``ClusterTopology``: three masters, no replicas, created with ``redis-cli --cluster create``;
  ``url`` is ``redis+cluster://127.0.0.1:<first node port>``.

Every process runs on free ports and is registered with a ``Stack``, which stops it by PID. Startup
waits with ``wait_until`` on what the clients need (the sentinel names the master; every node says
``cluster_state:ok``), never with sleeps.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import redis

from tests.harness.procs import Proc, free_port, wait_until
from tests.harness.redis import RedisServer, redis_binary, redis_cli_binary
from tests.harness.stack import Stack

__all__ = ["ClusterTopology", "SentinelTopology"]

HOST = "127.0.0.1"
SERVICE = "mymaster"


class _Sentinel:
    """A redis-server in sentinel mode (it rewrites its config file, so each gets its own)."""

    def __init__(self, *, workdir: Path, master_port: int) -> None:
        self.port = free_port(HOST)
        config = workdir / f"sentinel-{self.port}.conf"
        config.write_text(
            f"port {self.port}\nbind {HOST}\nprotected-mode no\ndir {workdir}\n"
            f"sentinel monitor {SERVICE} {HOST} {master_port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 5000\n"
        )
        self.proc = Proc("redis-sentinel", [redis_binary(), str(config), "--sentinel"], log_dir=workdir)

    def master_port(self) -> int | None:
        found = redis.Redis(host=HOST, port=self.port).sentinel_get_master_addr_by_name(SERVICE)
        return int(found[1]) if isinstance(found, tuple) else None

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.proc.stop(timeout)


class SentinelTopology:
    def __init__(self, stack: Stack) -> None:
        self.master = stack.add(RedisServer(workdir=stack.workdir)).start()
        self.sentinel = stack.add(_Sentinel(workdir=stack.workdir, master_port=self.master.port))
        self.sentinel.proc.start()
        wait_until(
            lambda: self.sentinel.master_port() == self.master.port, 20.0,
            what=f"sentinel on {self.sentinel.port} naming the master", proc=self.sentinel.proc,
        )

    @property
    def url(self) -> str:
        return f"redis+sentinel://{HOST}:{self.sentinel.port}/{SERVICE}"

    def masters(self) -> list[redis.Redis]:
        return [redis.Redis(host=HOST, port=self.master.port)]


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000; Redis 6.2 cannot set it apart) is free too."""
    while True:
        port = free_port(HOST)
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port + 10000))
            except OSError:
                continue
        return port


class ClusterTopology:
    def __init__(self, stack: Stack, *, nodes: int = 3) -> None:
        cluster_args = ("--cluster-enabled", "yes", "--cluster-node-timeout", "5000")
        self.nodes = [
            stack.add(RedisServer(workdir=stack.workdir, port=_cluster_port(), extra_args=cluster_args)).start()
            for _ in range(nodes)
        ]
        create = [
            redis_cli_binary(), "--cluster", "create", *(f"{HOST}:{n.port}" for n in self.nodes),
            "--cluster-replicas", "0", "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
        for node in self.nodes:
            wait_until(
                lambda node=node: self._state(node.port) == "ok", 20.0,  # type: ignore[misc]
                what=f"cluster_state:ok on {node.port}", proc=node.proc,
            )

    @staticmethod
    def _state(port: int) -> str:
        info: dict[str, str] = redis.Redis(host=HOST, port=port, decode_responses=True).cluster("INFO")
        return info["cluster_state"]

    @property
    def url(self) -> str:
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    def masters(self) -> list[redis.Redis]:
        return [redis.Redis(host=HOST, port=n.port) for n in self.nodes]



def flush(topology: SentinelTopology | ClusterTopology) -> None:
    """Empty every master (counters of earlier tests share the session's topology)."""
    for client in topology.masters():
        client.flushall()
