"""Shared fixtures: real Envoy, Redis, model servers and meshgate processes on free ports.

Each fixture stops exactly the processes it started (by PID) at teardown. The test process never imports
kserve (see tests/harness/model_server.py). Tests are marked by directory: tests/unit -> ``unit``,
tests/service -> ``service``, tests/e2e -> ``e2e``,
tests/faults -> ``faults``, tests/fuzz -> ``fuzz``, tests/conformance -> ``conformance``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness.envoy import Bootstrap, Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack

TESTS_DIR = Path(__file__).resolve().parent
TIERS = ("unit", "service", "e2e", "faults", "fuzz", "conformance")
_STACK_KEY = pytest.StashKey[Stack]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            tier = item.path.resolve().relative_to(TESTS_DIR).parts[0]
        except (ValueError, IndexError):
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """On a failed test, append the log tail of every process the test started to the report."""
    report = yield
    stack = item.stash.get(_STACK_KEY, None)
    if stack is not None and report.failed and call.when == "call":
        for title, text in stack.log_sections():
            report.sections.append((f"log {title}", text))
    return report


@pytest.fixture
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """Processes started by this test (logs under tmp_path/procs); all stopped at teardown."""
    stack = Stack(tmp_path / "procs")
    request.node.stash[_STACK_KEY] = stack
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def envoy_factory(harness: Stack) -> Callable[..., Envoy]:
    """``envoy_factory(bootstrap, *, wait_ready=True, log_level="info", concurrency=1, ...) -> Envoy``."""

    def start(bootstrap: Bootstrap, *, wait_ready: bool = True, **kwargs: Any) -> Envoy:
        envoy = harness.add(Envoy(bootstrap, workdir=harness.workdir, **kwargs))
        return envoy.start(wait_ready=wait_ready)

    return start


@pytest.fixture
def redis_server(harness: Stack) -> RedisServer:
    """A started redis-server on a free port (no persistence); ``stop()`` / ``start()`` keep the port."""
    return harness.add(RedisServer(workdir=harness.workdir)).start()


@pytest.fixture
def model_server_factory(harness: Stack) -> Callable[..., ModelServer]:
    """``model_server_factory(name="demo", version="1", *, wait=True) -> ModelServer`` (REST + gRPC)."""

    def start(name: str = "demo", version: str = "1", *, wait: bool = True) -> ModelServer:
        server = harness.add(ModelServer(name, version, workdir=harness.workdir))
        return server.start(wait=wait)

    return start


@pytest.fixture
def model_server(model_server_factory: Callable[..., ModelServer]) -> ModelServer:
    """One demo model ``demo`` version ``1``."""
    return model_server_factory("demo", "1")


@pytest.fixture
def meshgate_factory(harness: Stack) -> Callable[..., Meshgate]:
    """``meshgate_factory(policy, *, redis_url=None, extra_args=(), env=None, ...) -> Meshgate`` (started).

    ``policy`` is a file path or a mapping (written as YAML); other keywords go to ``Meshgate``.
    """

    def start(
        policy: Path | Mapping[str, Any],
        *,
        redis_url: str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Meshgate:
        server = Meshgate(
            policy, workdir=harness.workdir, redis_url=redis_url, extra_args=extra_args, env=env, **kwargs
        )
        return harness.add(server).start()

    return start
