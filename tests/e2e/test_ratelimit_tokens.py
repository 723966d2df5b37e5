"""LLM token quotas through a real Envoy 1.40, with exactly the rate_limits docs/ratelimit.md documents:

- at request time, a descriptor ending in `meshgate.phase=check` whose hits_addend is the tokens the
  caller asked for, read from ext_authz dynamic metadata
  (`%DYNAMIC_METADATA(envoy.filters.http.ext_authz:meshgate:tokens)%`): checked, not consumed;
- at stream end (`apply_on_stream_done: true`), the same descriptor ending in `meshgate.phase=charge`
  whose hits_addend is the usage the upstream reported in its JSON body (`usage.total_tokens`), moved
  into dynamic metadata by json_to_metadata (`%DYNAMIC_METADATA(meshgate.usage:tokens)%`): always
  charged. (SSE streams and the filters xds generates: tests/e2e/test_llm_usage.py, docs/llm.md.)

A stub ext_authz (in this process) plays meshgate extauthz: it returns the same metadata shape,
`{"meshgate": {"tokens": N}}`, taking N from a test header.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import struct_pb2

from tests.harness import bootstraps as b
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import Proc, free_port, http_get, wait_until
from tests.harness.stack import Stack

POLICY: dict[str, Any] = {
    "tenants": [{"name": "acme", "quotas": ["tokens-per-hour"]}],
    "quotas": [{"name": "tokens-per-hour", "per": "tenant", "unit": "tokens", "limit": 1000, "window": "hour"}],
}
_T = "type.googleapis.com/envoy.extensions.filters.http."

UPSTREAM = """
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"usage": {"total_tokens": int(self.headers.get("x-test-usage", "0"))}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


class Authz(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def Check(self, request: Any, context: Any) -> Any:
        tokens = int(request.attributes.request.http.headers.get("x-test-tokens", "0"))
        metadata = struct_pb2.Struct()
        metadata.update({"meshgate": {"tokens": tokens}})
        return external_auth_pb2.CheckResponse(dynamic_metadata=metadata)


@pytest.fixture
def authz() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Authz(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


class Upstream:
    host = "127.0.0.1"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.proc = Proc("usage-upstream", [sys.executable, "-c", UPSTREAM, str(self.port)], log_dir=workdir)

    def start(self) -> Upstream:
        self.proc.start()
        wait_until(lambda: http_get(f"http://{self.host}:{self.port}/")[0] == 200, 20, what="upstream", proc=self.proc)
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        return self.proc.stop(timeout)


def token_rate_limits() -> list[dict[str, Any]]:
    """The route's rate_limits for a per-tenant token quota (what the xds issue generates)."""
    identity = [
        {"generic_key": {"descriptor_key": "quota", "descriptor_value": "tokens-per-hour"}},
        {"request_headers": {"header_name": "x-meshgate-tenant", "descriptor_key": "tenant"}},
    ]
    return [
        {
            "actions": [*identity, {"generic_key": {"descriptor_key": "meshgate.phase", "descriptor_value": "check"}}],
            "hits_addend": {"format": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:meshgate:tokens)%"},
        },
        {
            "actions": [*identity, {"generic_key": {"descriptor_key": "meshgate.phase", "descriptor_value": "charge"}}],
            "hits_addend": {"format": "%DYNAMIC_METADATA(meshgate.usage:tokens)%"},
            "apply_on_stream_done": True,
        },
    ]


def gateway(upstream: Upstream, authz_port: int, rls_port: int, *, placement: str) -> dict[str, Any]:
    """`placement`: the rate_limits on the ratelimit filter itself, or on the route as the filter's
    typed_per_filter_config (RateLimitPerRoute). RouteAction.rate_limits is not used: Envoy 1.40
    drops hits_addend there (the descriptors arrive without it)."""
    route = b.route("/", "upstream")
    filter_limits = token_rate_limits() if placement == "filter" else []
    if placement == "per_route":
        route["typed_per_filter_config"] = {"envoy.filters.http.ratelimit": {
            "@type": _T + "ratelimit.v3.RateLimitPerRoute", "rate_limits": token_rate_limits()}}
    grpc_service = {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "2s"}
    filters = [
        {"name": "envoy.filters.http.ext_authz", "typed_config": {
            "@type": _T + "ext_authz.v3.ExtAuthz", "transport_api_version": "V3", "grpc_service": grpc_service}},
        {"name": "envoy.filters.http.json_to_metadata", "typed_config": {
            "@type": _T + "json_to_metadata.v3.JsonToMetadata",
            "response_rules": {"rules": [{"selectors": [{"key": "usage"}, {"key": "total_tokens"}], "on_present": {
                "metadata_namespace": "meshgate.usage", "key": "tokens", "type": "NUMBER"}}]}}},
        {"name": "envoy.filters.http.ratelimit", "typed_config": {
            "@type": _T + "ratelimit.v3.RateLimit", "domain": "meshgate", "failure_mode_deny": True, "timeout": "1s",
            "rate_limits": filter_limits,
            "rate_limit_service": {"transport_api_version": "V3",
                                   "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}}}},
    ]
    clusters = [
        b.static_cluster("upstream", upstream.host, upstream.port),
        b.static_cluster("authz", "127.0.0.1", authz_port, http2=True),
        b.static_cluster("rls", "127.0.0.1", rls_port, http2=True),
    ]
    return b.bootstrap([b.hcm_listener("ingress", [route], http_filters=filters)], clusters)


def remaining(address: str) -> int:
    """What the quota has left, asked with hits_addend 0 (checks, adds nothing)."""
    request = rls_pb2.RateLimitRequest(domain="meshgate")
    descriptor = request.descriptors.add()
    for key, value in (("quota", "tokens-per-hour"), ("tenant", "acme")):
        descriptor.entries.add(key=key, value=value)
    descriptor.hits_addend.value = 0
    with grpc.insecure_channel(address) as channel:
        reply = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request, timeout=2.0)
    return int(reply.statuses[0].limit_remaining)


@pytest.mark.parametrize("placement", ["filter", "per_route"])
def test_tokens_checked_with_what_is_asked_and_charged_with_what_was_used(
    meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy], harness: Stack, authz: int,
    placement: str,
) -> None:
    upstream = harness.add(Upstream(harness.workdir)).start()
    mg = meshgate_factory(POLICY)
    envoy = envoy_factory(gateway(upstream, authz, mg.ports["ratelimit"], placement=placement))
    address = mg.address("ratelimit")

    def ask(asked: int, used: int) -> int:
        headers = {"x-meshgate-tenant": "acme", "x-test-tokens": str(asked), "x-test-usage": str(used)}
        return client.get("/", headers=headers).status_code

    def charged_to(left: int) -> None:
        wait_until(lambda: remaining(address) == left, 10, what=f"remaining == {left}", proc=mg.proc)

    with httpx.Client(base_url=f"http://127.0.0.1:{envoy.listener_port('ingress')}", trust_env=False) as client:
        assert ask(300, 600) == 200
        charged_to(400)  # the 300 asked were only checked; the 600 used were charged at stream end
        assert ask(500, 0) == 429  # 600 + 500 > 1000
        assert remaining(address) == 400  # a refused request is not charged
        assert ask(400, 700) == 200  # 600 + 400 fits; it then uses more than it asked
        charged_to(0)  # 1300 used: overshoot bounded by what was in flight
        assert ask(1, 0) == 429
