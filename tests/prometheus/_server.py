"""A real Prometheus on a free port, scraping given targets every second, stopped by PID (tests.harness)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.harness.procs import Proc, free_port, http_get, wait_for_http
from tests.prometheus._tools import binary

__all__ = ["Prometheus"]


class Prometheus:
    """`jobs` maps a job name to (host:port, metrics path); `rule_files` are loaded as they are."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        jobs: Mapping[str, tuple[str, str]],
        *,
        rule_files: tuple[Path, ...] = (),
    ) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [target]}]}
                for job, (target, path) in jobs.items()
            ],
        }
        config_path = workdir / f"prometheus-{self.port}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [
            binary("prometheus"),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / f'prometheus-{self.port}-data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--log.level=warn",
        ]
        self.proc = Proc("prometheus", argv, log_dir=workdir)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Prometheus:
        self.proc.start()
        wait_for_http(f"{self.url}/-/ready", 30, proc=self.proc)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.proc.stop(timeout)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/`path`: its `data` (an AssertionError with the error when it is not a success)."""
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=5.0)
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", (path, params, answer)
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the vector's samples, as the API gives them (`metric`, `value`)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result
