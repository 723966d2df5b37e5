"""meshgate/tracing.py's exporter against an OTLP/HTTP receiver on a free port (tests/harness/otlp.py):
what `configure` builds from OTEL_* variables sends OTLP's JSON encoding to /v1/traces, with the
configured headers, and a span continuing an incoming traceparent keeps its trace and parent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace

from meshgate.tracing import configure, incoming
from tests.harness.otlp import OtlpReceiver
from tests.harness.procs import wait_until

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    started = OtlpReceiver().start()
    try:
        yield started
    finally:
        started.stop()


def test_spans_reach_an_otlp_http_receiver_as_json(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    made_global: list[object] = []  # the process's global provider is left alone for the other tests
    monkeypatch.setattr(trace, "set_tracer_provider", made_global.append)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.http_port}",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-key=k%201",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        "OTEL_SERVICE_NAME": "meshgate-under-test",
    }
    provider = configure(env)
    assert provider is not None and made_global == [provider]
    try:
        tracer = provider.get_tracer("meshgate.test")
        parent = incoming([("traceparent", TRACEPARENT)])
        with tracer.start_as_current_span("extauthz.check", context=parent, kind=trace.SpanKind.SERVER,
                                          attributes={"meshgate.code": 0, "meshgate.tenant": "acme"}):  # fmt: skip
            pass
        assert provider.force_flush()
        wait_until(lambda: receiver.of("meshgate-under-test"), 10, what="the exported span")
    finally:
        provider.shutdown()
    (span,) = receiver.of("meshgate-under-test")
    assert (span.name, span.transport, span.kind) == ("extauthz.check", "http/json", 2)  # SPAN_KIND_SERVER
    assert (span.trace_id, span.parent_span_id) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert len(span.span_id) == 16 and span.span_id != span.parent_span_id
    assert span.attributes == {"meshgate.code": 0, "meshgate.tenant": "acme"}
    (headers,) = receiver.http_requests
    assert headers["content-type"] == "application/json" and headers["x-collector-key"] == "k 1"
