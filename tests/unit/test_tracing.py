"""meshgate/tracing.py: OpenTelemetry from the OTEL_* environment (off when unset), the trace context of
an incoming call, and the GenAI attributes of an OpenAI call."""

from __future__ import annotations

import pytest

from meshgate.extauthz.request import Target
from meshgate.ratelimit.decision import Descriptor
from meshgate.tracing import enabled, genai_request, genai_usage, incoming

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "meshgate"}, False),  # a name alone exports nothing
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_on_only_when_the_environment_names_an_exporter(env: dict[str, str], on: bool) -> None:
    assert enabled(env) is on


def test_an_unknown_protocol_is_refused_at_start() -> None:
    from meshgate.tracing import configure

    with pytest.raises(ValueError, match="grpc or http/protobuf"):
        configure({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"})
    assert configure({}) is None


def test_the_calls_metadata_comes_before_the_request_headers() -> None:
    from opentelemetry import trace

    other = "00-11111111111111111111111111111111-2222222222222222-01"
    parent = incoming([("traceparent", TRACEPARENT), ("x-other", "1")], {"traceparent": other})
    assert parent is not None
    span = trace.get_current_span(parent).get_span_context()
    assert (f"{span.trace_id:032x}", f"{span.span_id:016x}") == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    from_headers = trace.get_current_span(incoming([], {"traceparent": other})).get_span_context()
    assert f"{from_headers.trace_id:032x}" == "1" * 32
    assert incoming(None, {}) is None and incoming([("x", "y")]) is None


def test_genai_attributes_of_openai_calls_only() -> None:
    chat = Target(kind="model", model="zen-chat", max_tokens=5)
    assert genai_request("/v1/chat/completions", chat) == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "zen-chat", "gen_ai.request.max_tokens": 5}
    assert genai_request("/openai/v1/embeddings?x=1", Target(kind="model", model="e"))["gen_ai.operation.name"] == "embeddings"
    assert genai_request("/v2/models/demo/infer", Target(kind="model", model="demo")) == {}  # not an LLM call
    assert genai_request("/v1/models", Target(kind="models")) == {}
    usage = [Descriptor((("meshgate.usage", "prompt_tokens"), ("tenant", "a"), ("model", "m")), None, 7),
             Descriptor((("meshgate.usage", "completion_tokens"), ("tenant", "a"), ("model", "m")), None, 3),
             Descriptor((("quota", "q"), ("tenant", "a")), None, 1)]
    assert genai_usage(usage) == {
        "gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 3, "gen_ai.request.model": "m"}


def test_stale_otlp_protos_turn_tracing_off_with_one_error_naming_the_repair(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """xds-protos ships an old copy of opentelemetry/proto; installed after opentelemetry-proto (what one
    `pip install` does) it shadows it, and the OTLP exporter cannot import. meshgate serves untraced."""
    from meshgate import tracing

    monkeypatch.setattr(tracing, "otlp_protos_current", lambda: False)
    with caplog.at_level("ERROR", logger="meshgate.tracing"):
        assert tracing.configure({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}) is None
    assert [r.getMessage() for r in caplog.records] == [f"tracing off: {tracing.STALE_OTLP_PROTOS}"]
