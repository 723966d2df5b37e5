"""The demo KServe model (meshgate.models.demo_server) in its own process, REST and gRPC on free ports.

Always a subprocess: kserve's and tritonclient.grpc's generated protos both register
``inference.ServerLiveRequest`` in protobuf's default pool, so the test process must never import kserve.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from tests.harness.procs import Proc, child_env, free_port, wait_for_http, wait_for_tcp

__all__ = ["ModelServer", "expected_output"]


def expected_output(values: Sequence[float], version: str) -> list[float]:
    """What the demo model answers for INPUT0 = ``values``: ``x * 2 + version_offset(version)``."""
    from meshgate.models.demo_server import version_offset  # stdlib-only module: safe to import here

    offset = version_offset(version)
    return [v * 2 + offset for v in values]


class ModelServer:
    """``start()`` returns once ``/v2/health/ready`` and ``/v2/models/{name}/ready`` answer 200 and the
    gRPC port accepts connections."""

    host = "127.0.0.1"

    def __init__(
        self,
        name: str = "demo",
        version: str = "1",
        *,
        workdir: Path,
        startup_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.version = version
        self.http_port = free_port(self.host)
        self.grpc_port = free_port(self.host)
        self.startup_timeout = startup_timeout
        argv = [
            sys.executable, "-m", "meshgate.models.demo_server",
            "--model-name", name,
            "--model-version", version,
            "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port),
        ]  # fmt: skip
        self.proc = Proc(f"model-{name}-v{version}", argv, log_dir=workdir, env=child_env())

    def __repr__(self) -> str:
        return f"ModelServer({self.name} v{self.version}, rest={self.rest_url}, grpc={self.grpc_address})"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self, *, wait: bool = True) -> ModelServer:
        """Launch; with ``wait=False`` call ``wait_ready()`` later (start several, then wait for all)."""
        self.proc.start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        wait_for_http(f"{self.rest_url}/v2/health/ready", self.startup_timeout, proc=self.proc)
        wait_for_http(f"{self.rest_url}/v2/models/{self.name}/ready", self.startup_timeout, proc=self.proc)
        wait_for_tcp(self.host, self.grpc_port, self.startup_timeout, proc=self.proc)

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.proc.stop(timeout)

    def expected(self, values: Sequence[float]) -> list[float]:
        return expected_output(values, self.version)
