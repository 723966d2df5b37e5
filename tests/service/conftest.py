"""Service-tier fixtures: real Redis Sentinel and Redis Cluster topologies (tests/service/_redis_topologies.py).

Session-scoped: each starts once, on first use, and is stopped by PID at the end of the session. Tests
sharing one call ``flush(topology)`` first.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.stack import Stack
from tests.service._redis_topologies import ClusterTopology, SentinelTopology


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    """A master and one sentinel; ``.url`` is ``redis+sentinel://127.0.0.1:<port>/mymaster``."""
    stack = Stack(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        yield SentinelTopology(stack)
    finally:
        stack.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    """Three masters, no replicas; ``.url`` is ``redis+cluster://127.0.0.1:<port>``."""
    stack = Stack(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield ClusterTopology(stack)
    finally:
        stack.close()
