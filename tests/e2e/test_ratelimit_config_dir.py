"""`meshgate serve --ratelimit-config DIR`: envoyproxy/ratelimit YAML beside the policy, watched: a good
change goes live by itself, a bad one is refused and the live config kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from tests.harness.meshgate import Meshgate
from tests.harness.procs import http_get, wait_until

FILE = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: LIMIT}
"""


def current_limit(address: str, value: str) -> int:
    request = rls_pb2.RateLimitRequest(domain="edge")
    descriptor = request.descriptors.add()
    descriptor.entries.add(key="remote_address", value=value)
    descriptor.hits_addend.value = 0
    with grpc.insecure_channel(address) as channel:
        reply = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request, timeout=2.0)
    return int(reply.statuses[0].current_limit.requests_per_unit)


def loads(mg: Meshgate, result: str) -> float:
    _, body = http_get(mg.metrics_url)
    prefix = f'meshgate_ratelimit_config_loads_total{{result="{result}"}} '
    return sum(float(line.split()[-1]) for line in body.decode().splitlines() if line.startswith(prefix))


def test_directory_is_watched(meshgate_factory: Callable[..., Meshgate], tmp_path: Path) -> None:
    limits = tmp_path / "limits"
    limits.mkdir()
    (limits / "edge.yaml").write_text(FILE.replace("LIMIT", "10"))
    mg = meshgate_factory({"tenants": []}, extra_args=["--ratelimit-config", str(limits)])
    address = mg.address("ratelimit")
    assert current_limit(address, "10.0.0.1") == 10

    (limits / "edge.yaml").write_text(FILE.replace("LIMIT", "25"))
    wait_until(lambda: current_limit(address, "10.0.0.1") == 25, 15, what="new limit live", proc=mg.proc)

    (limits / "edge.yaml").write_text(FILE.replace("LIMIT", "lots"))
    wait_until(lambda: loads(mg, "invalid") >= 1, 15, what="bad file refused", proc=mg.proc)
    assert current_limit(address, "10.0.0.1") == 25
    assert "edge.yaml:5: descriptors[0].rate_limit.requests_per_unit: expected an integer" in mg.proc.tail(50)
