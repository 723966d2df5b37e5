"""One trace from the gateway through meshgate to the model, received over OTLP by a real collector.

The collector is a minimal OTLP receiver (tests/harness/otlp.py, a fake collector): OTLP/HTTP with the
JSON encoding and OTLP/gRPC, like a collector's two receivers. Both exporters are real: `meshgate serve`
exports OTLP/HTTP JSON with the exporter configured from OTEL_* variables (meshgate/tracing.py), and
the gateway Envoy OTLP/gRPC with its OpenTelemetry tracer, which meshgate's xds configured because
MESHGATE_XDS_TRACING names the collector's gRPC port. Nothing is skipped on a fresh install. One OpenAI chat request goes through
Envoy (ext_authz -> ratelimit -> the chat stand-in): Envoy's ext_authz and rate limit call spans are the
parents of meshgate's `extauthz.check` and `ratelimit.should_rate_limit`, in Envoy's trace, beside
Envoy's upstream span to the model; the spans carry the GenAI attributes; xds pushes are spans too.
The rate limit call Envoy makes at stream end, which charges the tokens used, carries no trace context
in Envoy 1.40; meshgate's xds adds the request's traceparent to it as a descriptor, so its span is in
the request's trace too, below Envoy's upstream span.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import httpx
import pytest

from meshgate.xds.bootstrap import bootstrap_dict
from tests.e2e.test_llm_usage import ChatStandIn
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.otlp import OtlpReceiver, Span
from tests.harness.procs import free_port, wait_until
from tests.harness.stack import Stack

MODEL, KEY = "zen-chat", "trace-key-acme"


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


def test_envoy_span_is_the_parent_of_meshgates_in_one_trace(
    harness: Stack,
    collector: OtlpReceiver,
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    receiver = collector
    backend = harness.add(ChatStandIn(harness.workdir)).start()
    gateway_port = free_port()
    policy = {
        "version": 1,
        "gateway": {"port": gateway_port},
        "api_keys": [{"id": "acme-key", "tenant": "acme", "roles": ["invoker"],
                      "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
        "tenants": [{"name": "acme", "quotas": ["per-day"]}],
        "roles": [{"name": "invoker", "models": [MODEL]}],
        "models": [{"name": MODEL, "protocol": "openai",
                    "versions": [{"name": "v1", "endpoints": [f"{backend.host}:{backend.port}"]}]}],
        "quotas": [{"name": "per-day", "per": ["tenant"], "limit": 100, "window": "day"}],
    }  # fmt: skip
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.http_port}",
        "OTEL_SERVICE_NAME": "meshgate",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: the batch goes out soon (the test waits for it)
        "MESHGATE_XDS_TRACING": f"127.0.0.1:{receiver.grpc_port}",
    }
    mg = meshgate_factory(policy, env=env)
    bootstrap = bootstrap_dict("gateway-traced", xds=mg.address("xds"))
    # Envoy's tracer sends its spans every 5 s or per 5 spans by default: at once here
    bootstrap["layered_runtime"] = {"layers": [{"name": "static", "static_layer": {
        "tracing.opentelemetry.min_flush_spans": 1, "tracing.opentelemetry.flush_interval_ms": 100}}]}
    envoy_factory(bootstrap)

    body = {"model": MODEL, "messages": [{"role": "user", "content": "Is now better than never?"}], "max_tokens": 5}
    answer = httpx.post(f"http://127.0.0.1:{gateway_port}/v1/chat/completions", json=body,
                        headers={"authorization": f"Bearer {KEY}"}, timeout=10, trust_env=False)  # fmt: skip
    assert answer.status_code == 200, answer.text

    def both_sides() -> bool:
        checks = receiver.of("meshgate", "extauthz.check")
        limits = receiver.of("meshgate", "ratelimit.should_rate_limit")
        envoy = receiver.of("meshgate-gateway")
        return bool(checks and len(limits) >= 2 and envoy) and _upstream(envoy) is not None

    wait_until(both_sides, 20, what="spans from meshgate and from Envoy", proc=mg.proc)
    envoy = receiver.of("meshgate-gateway")
    by_id = {span.span_id: span for span in envoy}
    (check,) = receiver.of("meshgate", "extauthz.check")
    parent = by_id.get(check.parent_span_id)
    assert parent is not None, f"extauthz.check's parent is not an Envoy span: {[s.name for s in envoy]}"
    assert check.trace_id == parent.trace_id
    assert "Authorization" in parent.name  # Envoy's ext_authz call, its own child of the request's span
    # each side over its own transport: meshgate OTLP/HTTP JSON, Envoy OTLP/gRPC
    assert {s.transport for s in receiver.of("meshgate")} == {"http/json"}
    assert {s.transport for s in envoy} == {"grpc"}
    root = by_id[parent.parent_span_id]
    assert root.trace_id == check.trace_id
    # the same trace goes on to the model: Envoy's upstream span under the request's
    upstream = _upstream(envoy)
    assert upstream is not None and upstream.trace_id == check.trace_id

    limits = receiver.of("meshgate", "ratelimit.should_rate_limit")
    admission = [s for s in limits if "gen_ai.usage.input_tokens" not in s.attributes]
    assert admission and all(by_id.get(s.parent_span_id) is not None for s in admission)
    for span in admission:  # Envoy's rate limit call is the parent, in the request's trace
        assert span.trace_id == check.trace_id and "RateLimitService" in by_id[span.parent_span_id].name
    # the stream-end charge: Envoy 1.40 sends it with no trace context in its metadata; the descriptor
    # meshgate.traceparent (xds adds it when the gateway traces) carries the request's, from the
    # traceparent header Envoy's router set for its upstream span: the charge is in the request's trace
    (charge,) = [s for s in limits if "gen_ai.usage.input_tokens" in s.attributes]
    assert charge.trace_id == check.trace_id and charge.parent_span_id == upstream.span_id

    # GenAI semantic conventions where they apply
    seen = check.attributes
    assert seen["gen_ai.operation.name"] == "chat" and seen["gen_ai.request.model"] == MODEL
    assert seen["gen_ai.request.max_tokens"] == 5 and seen["meshgate.tenant"] == "acme"
    usage = answer.json()["usage"]
    charged = [s.attributes for s in limits if "gen_ai.usage.input_tokens" in s.attributes]
    assert charged == [{**charged[0], "gen_ai.usage.input_tokens": usage["prompt_tokens"],
                        "gen_ai.usage.output_tokens": usage["completion_tokens"], "gen_ai.request.model": MODEL}]

    pushes = [s.attributes for s in receiver.of("meshgate", "xds.push")]
    assert {p["meshgate.xds.type"] for p in pushes if p["meshgate.xds.node"] == "gateway-traced"} >= {
        "Listener", "RouteConfiguration", "Cluster"}


def _upstream(envoy: list[Span]) -> Span | None:
    """Envoy's span of the request to the model's cluster (spawn_upstream_span: the router's egress span;
    the ingress span names the same upstream_cluster, and the spans arrive in any order)."""
    for span in envoy:
        if span.attributes.get("upstream_cluster") == f"model|{MODEL}|v1" and span.name.startswith("router "):
            return span
    return None
