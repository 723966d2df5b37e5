"""`meshgate status` against a running `meshgate serve`: the Envoys connected to its xds with what each
ACKed and NACKed per resource type and version, each quota's counter with its current use, the policy
generation and digest, and the last rejected reload with its error.

A real Envoy ACKs everything; a second ADS stream, opened by the test under another node id, NACKs the
route configuration. Quota use comes from real ShouldRateLimit calls on the ratelimit port.
"""

from __future__ import annotations

import hashlib
import queue
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.rpc import status_pb2

from meshgate import binaries
from meshgate.xds.bootstrap import bootstrap_dict
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import child_env, free_port, wait_until

ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
POLICY = {
    "version": 1,
    "tenants": [
        {"name": "acme", "quotas": ["per-day", "per-user"]},
        {"name": "globex", "quotas": ["per-day"]},
    ],
    "tiers": [],
    "models": [{"name": "demo", "versions": [{"name": "v1", "endpoints": ["127.0.0.1:9"]}]}],
    "quotas": [
        {"name": "per-day", "per": ["tenant", "model"], "limit": 5, "window": "day"},
        {"name": "per-user", "per": ["tenant", "user"], "limit": 9, "window": "hour"},
    ],
}


def status(mg: Meshgate) -> str:
    argv = [*binaries.meshgate_argv(), "status", "--addr", mg.address("extauthz")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=child_env(), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class NackingStream:
    """One SotW ADS stream that asks for the route configuration and NACKs what it gets."""

    def __init__(self, address: str, node: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self._out: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.responses: Iterator[discovery_pb2.DiscoveryResponse] = stub.StreamAggregatedResources(
            self._requests()
        )
        self.node = base_pb2.Node(id=node)

    def _requests(self) -> Iterator[discovery_pb2.DiscoveryRequest]:
        while (request := self._out.get()) is not None:
            yield request

    def nack_routes(self) -> str:
        self._out.put(
            discovery_pb2.DiscoveryRequest(node=self.node, type_url=ROUTE, resource_names=["meshgate_routes"])
        )
        response = next(self.responses)
        self._out.put(discovery_pb2.DiscoveryRequest(
            node=self.node, type_url=ROUTE, resource_names=["meshgate_routes"], response_nonce=response.nonce,
            error_detail=status_pb2.Status(code=3, message="route rejected by the test"),
        ))  # fmt: skip
        return response.version_info

    def close(self) -> None:
        self._out.put(None)
        self.channel.close()


def use(mg: Meshgate, tenant: str, hits: int) -> None:
    request = rls_pb2.RateLimitRequest(domain="meshgate")
    d = request.descriptors.add()
    for key, value in (("quota", "per-day"), ("tenant", tenant), ("model", "demo")):
        d.entries.add(key=key, value=value)
    d.hits_addend.value = hits
    with grpc.insecure_channel(mg.address("ratelimit")) as channel:
        rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request, timeout=5)


def test_status_shows_envoys_acks_nacks_quotas_and_the_last_rejected_reload(
    tmp_path: Path, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy]
) -> None:
    policy = dict(POLICY, gateway={"port": free_port()})
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    mg = meshgate_factory(path, extra_args=["--reload-settle", "0.05"])
    envoy_factory(bootstrap_dict("gateway-status", xds=mg.address("xds")))
    nacker = NackingStream(mg.address("xds"), "nacking-proxy")
    try:
        nacked = nacker.nack_routes()
        use(mg, "acme", 2)
        wait_until(lambda: " NACK " in status(mg), 20, what="the NACK in meshgate status", proc=mg.proc)
        text = status(mg)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        assert "policy generation 1" in text and f"sha256 {digest}" in text
        assert "envoys: 2 connected" in text
        gateway = text.split("  gateway-status (")[1].split("\n  nacking-proxy")[0]
        for kind in ("Listener", "RouteConfiguration", "Cluster"):
            assert f"{kind} " in gateway and "NACK" not in gateway
        assert "ClusterLoadAssignment  ACK " in gateway and "no answer" not in gateway
        assert f"    RouteConfiguration     NACK {nacked} (1 push): route rejected by the test; it keeps " \
               "nothing of this type" in text  # fmt: skip
        assert "  per-day tenant acme model demo: 2/5 requests this day, 3 left" in text
        assert "  per-day tenant globex model demo: 0/5 requests this day, 5 left" in text
        assert "  per-user tenant acme: per user, 9 requests per hour each (not listed)" in text
        assert "last rejected" not in text

        # a policy that does not validate: the last good one stays, status names the refusal
        bad = path.with_suffix(".tmp")
        bad.write_text(path.read_text().replace("limit: 5", "limit: -5"))
        bad.replace(path)
        wait_until(lambda: "last rejected" in status(mg), 20, what="the rejected reload", proc=mg.proc)
        text = status(mg)
        assert "last rejected: policy at " in text and "(invalid); the live one kept" in text
        assert f"  {path}:" in text and "quotas[0].limit: " in text
        assert "policy generation 1" in text
    finally:
        nacker.close()


def test_status_answers_while_redis_is_down(tmp_path: Path) -> None:
    """The store down is when an operator asks: status still answers (ratelimit DOWN, no quota use, the
    rest as ever) where it failed UNKNOWN; explain --addr says the counters cannot be read."""
    key = "status-test-key"
    doc = {
        **POLICY,
        "roles": [{"name": "invoker", "models": ["*"]}],
        "api_keys": [
            {
                "id": "k",
                "tenant": "acme",
                "roles": ["invoker"],
                "sha256": hashlib.sha256(key.encode()).hexdigest(),
            }
        ],
    }
    mg = Meshgate(doc, workdir=tmp_path, redis_url=f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    try:
        mg.start()
        shown = status(mg)
        assert "ratelimit_store=DOWN" in shown and "per-day" not in shown and "s3cret" not in shown
        argv = [*binaries.meshgate_argv(), "explain", "--addr", mg.address("extauthz"), "-H", f"x-api-key: {key}",
                "/v2/models/demo/infer"]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=child_env(), check=False)
        assert done.returncode != 0 and "the quotas' counters cannot be read" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
    finally:
        mg.proc.stop()
