"""``python -m meshgate serve`` in a subprocess, every server on an ephemeral port.

Contract with the CLI: once every server listens, ``--ready-file PATH`` is written atomically with JSON
``{"extauthz": port, "extauthz_http": port, "ratelimit": port, "xds": port, "metrics": port, "pid": pid}``.
"""

from __future__ import annotations

import itertools
import json
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from meshgate import binaries
from tests.harness.procs import Proc, StartupError, child_env, wait_until

__all__ = ["SERVICES", "Meshgate"]

SERVICES = ("extauthz", "extauthz_http", "ratelimit", "xds", "metrics")
_serial = itertools.count(1)


class Meshgate:
    """``start()`` returns once the ready file names a port for every service."""

    host = "127.0.0.1"

    def __init__(
        self,
        policy: Path | Mapping[str, Any],
        *,
        workdir: Path,
        redis_url: str | None = None,
        drain_delay: float | None = 0.0,
        grace: float | None = 2.0,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.name = f"meshgate-{next(_serial)}"
        workdir.mkdir(parents=True, exist_ok=True)
        if isinstance(policy, Mapping):
            self.policy_path = workdir / f"{self.name}-policy.yaml"
            self.policy_path.write_text(yaml.safe_dump(dict(policy), sort_keys=False))
        else:
            self.policy_path = Path(policy).resolve()
        self.ready_file = workdir / f"{self.name}.ready.json"
        self.startup_timeout = startup_timeout
        argv = [*binaries.meshgate_argv(), "serve", "--policy", str(self.policy_path)]
        argv += [arg for s in SERVICES for arg in (f"--{s.replace('_', '-')}", f"{self.host}:0")]
        argv += ["--ready-file", str(self.ready_file)]
        if redis_url is not None:
            argv += ["--redis-url", redis_url]
        if drain_delay is not None:
            argv += ["--drain-delay", str(drain_delay)]
        if grace is not None:
            argv += ["--grace", str(grace)]
        argv += list(extra_args)
        self.proc = Proc(self.name, argv, log_dir=workdir, env=child_env(env))
        self.ports: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Meshgate({self.name}, ports={self.ports}, proc={self.proc!r})"

    def start(self) -> Meshgate:
        self.ready_file.unlink(missing_ok=True)
        self.ports = {}
        self.proc.start()
        info = wait_until(
            self._read_ready_file, self.startup_timeout, what=f"{self.ready_file}", proc=self.proc
        )
        if info.get("pid") not in (None, self.proc.pid):
            raise StartupError(f"ready file names pid {info['pid']}, we started {self.proc.pid}")
        missing = [s for s in SERVICES if not isinstance(info.get(s), int)]
        if missing:
            raise StartupError(
                f"ready file lacks ports for {missing}: {info}\n{self.proc.describe_failure()}"
            )
        self.ports = {s: int(info[s]) for s in SERVICES}
        return self

    def _read_ready_file(self) -> dict[str, Any] | None:
        try:
            parsed = json.loads(self.ready_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return parsed if isinstance(parsed, dict) else None

    def address(self, service: str) -> str:
        """``127.0.0.1:port`` of ``extauthz``, ``extauthz_http``, ``ratelimit``, ``xds`` or ``metrics``."""
        if service not in self.ports:
            raise KeyError(f"{self.name}: no port for {service!r} (started? {self.proc!r})")
        return f"{self.host}:{self.ports[service]}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address('metrics')}/metrics"

    def reload(self) -> None:
        """SIGHUP: re-read the policy file."""
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s (drain + grace), then SIGKILL. Returns the exit code."""
        return self.proc.stop(timeout)
