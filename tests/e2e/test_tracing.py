"""One trace from the gateway through meshgate to the model, received over OTLP by a real collector.

The collector is a minimal OTLP/gRPC receiver in this test (opentelemetry-proto's TraceService). Both
exporters are real: `meshgate serve` exports with the OTLP exporter configured from OTEL_* variables
(meshgate/tracing.py), and the gateway Envoy with its OpenTelemetry tracer, which meshgate's xds
configured because MESHGATE_XDS_TRACING names the same collector. One OpenAI chat request goes through
Envoy (ext_authz -> ratelimit -> the chat stand-in): Envoy's ext_authz and rate limit call spans are the
parents of meshgate's `extauthz.check` and `ratelimit.should_rate_limit`, in Envoy's trace, beside
Envoy's upstream span to the model; the spans carry the GenAI attributes; xds pushes are spans too.
(The rate limit call Envoy makes at stream end, which charges the tokens used, carries no trace context
in Envoy 1.40: its span is a trace of its own.)
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from meshgate.tracing import STALE_OTLP_PROTOS, otlp_protos_current
from meshgate.xds.bootstrap import bootstrap_dict
from tests.e2e.test_llm_usage import ChatStandIn
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import free_port, wait_until
from tests.harness.stack import Stack

MODEL, KEY = "zen-chat", "trace-key-acme"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """Every span exported to it, flattened: (service.name, span)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans += [(attributes.get("service.name", ""), span) for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def of(self, service: str, name: str | None = None) -> list[Any]:
        with self._lock:
            return [s for svc, s in self.spans if svc == service and (name is None or s.name == name)]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(None)


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        value = a.value
        out[a.key] = getattr(value, value.WhichOneof("value"))
    return out


@pytest.mark.skipif(not otlp_protos_current(), reason=f"meshgate cannot export OTLP here: {STALE_OTLP_PROTOS}")
def test_envoy_span_is_the_parent_of_meshgates_in_one_trace(
    harness: Stack,
    collector: tuple[Collector, int],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    receiver, port = collector
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
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_SERVICE_NAME": "meshgate",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: the batch goes out soon (the test waits for it)
        "MESHGATE_XDS_TRACING": f"127.0.0.1:{port}",
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
    root = by_id[parent.parent_span_id]
    assert root.trace_id == check.trace_id
    # the same trace goes on to the model: Envoy's upstream span under the request's
    upstream = _upstream(envoy)
    assert upstream is not None and upstream.trace_id == check.trace_id

    limits = receiver.of("meshgate", "ratelimit.should_rate_limit")
    admission = [s for s in limits if "gen_ai.usage.input_tokens" not in attributes(s)]
    assert admission and all(by_id.get(s.parent_span_id) is not None for s in admission)
    for span in admission:  # Envoy's rate limit call is the parent, in the request's trace
        assert span.trace_id == check.trace_id and "RateLimitService" in by_id[span.parent_span_id].name
    # the stream-end charge: Envoy 1.40 sends it with no trace context (the request's span has ended),
    # so its span starts a trace of its own
    (charge,) = [s for s in limits if "gen_ai.usage.input_tokens" in attributes(s)]
    assert charge.parent_span_id == b"" and charge.trace_id != check.trace_id

    # GenAI semantic conventions where they apply
    seen = attributes(check)
    assert seen["gen_ai.operation.name"] == "chat" and seen["gen_ai.request.model"] == MODEL
    assert seen["gen_ai.request.max_tokens"] == 5 and seen["meshgate.tenant"] == "acme"
    usage = answer.json()["usage"]
    charged = [attributes(s) for s in limits if "gen_ai.usage.input_tokens" in attributes(s)]
    assert charged == [{**charged[0], "gen_ai.usage.input_tokens": usage["prompt_tokens"],
                        "gen_ai.usage.output_tokens": usage["completion_tokens"], "gen_ai.request.model": MODEL}]

    pushes = [attributes(s) for s in receiver.of("meshgate", "xds.push")]
    assert {p["meshgate.xds.type"] for p in pushes if p["meshgate.xds.node"] == "gateway-traced"} >= {
        "Listener", "RouteConfiguration", "Cluster"}


def _upstream(envoy: list[Any]) -> Any | None:
    """Envoy's span of the request to the model's cluster (spawn_upstream_span)."""
    for span in envoy:
        if attributes(span).get("upstream_cluster") == f"model|{MODEL}|v1":
            return span
    return None
