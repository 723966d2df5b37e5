"""meshgate/tracing.py: OpenTelemetry from the OTEL_* environment (off when unset), the trace context of
an incoming call, and the GenAI attributes of an OpenAI call."""

from __future__ import annotations

from typing import Any

import pytest

from meshgate import contract
from meshgate.clip import clip
from meshgate.extauthz.request import Target
from meshgate.ratelimit.decision import Descriptor
from meshgate.tracing import configure, enabled, export_settings, genai_request, genai_usage, incoming
from meshgate.xds._route_tree import flat_routes

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


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "http://localhost:4318/v1/traces"),  # the specification's default
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "http://c:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4318/otlp/"}, "https://c:4318/otlp/v1/traces"),
        # the traces endpoint is taken as it is, and before the general one
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9/x", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
         "http://t:9/x"),
    ],
)  # fmt: skip
def test_the_export_url_follows_the_specification(env: dict[str, str], url: str) -> None:
    assert export_settings(env)[0] == url


def test_timeout_in_milliseconds_and_headers_per_signal_first() -> None:
    env = {"OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b,x-tenant=acme",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}  # fmt: skip
    assert export_settings(env)[1:] == (2.5, {"api-key": "a b", "x-tenant": "acme"})
    env |= {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "100", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "k=v"}
    assert export_settings(env)[1:] == (0.1, {"k": "v"})
    assert export_settings({})[1:] == (10.0, {})  # the specification's 10 s


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL='grpc': meshgate exports spans over OTLP/HTTP in the JSON"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
         "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/protobuf'"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT: an http:// or https:// URL"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT='soon': a positive number of milliseconds"),
        ({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT='0'"),
    ],
)  # fmt: skip
def test_what_meshgate_cannot_honour_is_refused_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        configure({"OTEL_TRACES_EXPORTER": "otlp", **env})
    assert str(refused.value).startswith(message)
    assert configure({**env, "OTEL_SDK_DISABLED": "true"}) is None  # nothing is read while tracing is off


def test_the_calls_metadata_comes_before_the_request_headers() -> None:
    from opentelemetry import trace

    other = "00-11111111111111111111111111111111-2222222222222222-01"
    parent = incoming([("traceparent", TRACEPARENT), ("x-other", "1")], {"traceparent": other})
    assert parent is not None
    span = trace.get_current_span(parent).get_span_context()
    assert (f"{span.trace_id:032x}", f"{span.span_id:016x}") == (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
    )
    from_headers = trace.get_current_span(incoming([], {"traceparent": other})).get_span_context()
    assert f"{from_headers.trace_id:032x}" == "1" * 32
    assert incoming(None, {}) is None and incoming([("x", "y")]) is None


def test_genai_attributes_of_openai_calls_only() -> None:
    chat = Target(kind="model", model="zen-chat", max_tokens=5)
    assert genai_request("/v1/chat/completions", chat) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "zen-chat",
        "gen_ai.request.max_tokens": 5,
    }
    assert (
        genai_request("/openai/v1/embeddings?x=1", Target(kind="model", model="e"))["gen_ai.operation.name"]
        == "embeddings"
    )
    assert genai_request("/v2/models/demo/infer", Target(kind="model", model="demo")) == {}  # not an LLM call
    assert genai_request("/v1/models", Target(kind="models")) == {}
    usage = [
        Descriptor((("meshgate.usage", "prompt_tokens"), ("tenant", "a"), ("model", "m")), None, 7),
        Descriptor((("meshgate.usage", "completion_tokens"), ("tenant", "a"), ("model", "m")), None, 3),
        Descriptor((("quota", "q"), ("tenant", "a")), None, 1),
    ]
    assert genai_usage(usage) == {
        "gen_ai.usage.input_tokens": 7,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.request.model": "m",
    }
    # the model is the client's (a body, a descriptor): clipped as every logged client string
    huge = "m" * 100_000
    assert genai_request("/v1/chat/completions", Target(kind="model", model=huge))[
        "gen_ai.request.model"
    ] == clip(huge)
    usage = [Descriptor((("meshgate.usage", "prompt_tokens"), ("tenant", "a"), ("model", huge)), None, 7)]
    assert genai_usage(usage)["gen_ai.request.model"] == clip(huge) and len(clip(huge)) < 300


def _stream_end(route: Any) -> list[list[tuple[str, str]]]:
    """(descriptor key, header or value) per action of each stream-end rate limit of `route`."""
    from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2

    per_route = rate_limit_pb2.RateLimitPerRoute()
    if "envoy.filters.http.ratelimit" not in route.typed_per_filter_config:
        return []
    assert route.typed_per_filter_config["envoy.filters.http.ratelimit"].Unpack(per_route)
    return [
        [(a.request_headers.descriptor_key, a.request_headers.header_name) if a.HasField("request_headers")
         else (a.generic_key.descriptor_key, a.generic_key.descriptor_value) for a in limit.actions]
        for limit in per_route.rate_limits if limit.apply_on_stream_done
    ]  # fmt: skip


def test_when_the_gateway_traces_stream_end_calls_carry_the_requests_traceparent() -> None:
    """Envoy 1.40 sends the stream-end rate limit call with no trace context: xds adds a descriptor
    from the traceparent header Envoy's tracer set, on the routes that make that call, only when the
    gateway traces."""
    from meshgate.policy import load_policy
    from meshgate.xds import CompileOptions, compile_snapshot
    from meshgate.xds._types import ROUTE
    from tests.unit.test_xds_support import EXAMPLE

    trace_limit = [(contract.TRACE_KEY, "traceparent")]
    for options, traced in ((CompileOptions(tracing="collector:4317"), True), (CompileOptions(), False)):
        config = compile_snapshot(load_policy(EXAMPLE), options)[ROUTE]["meshgate_routes"].message
        charged = carried = 0
        for route in flat_routes(config.virtual_hosts[0]):
            limits = _stream_end(route)
            others = [limit for limit in limits if limit != trace_limit]
            charged += bool(others)
            carried += trace_limit in limits
            assert (trace_limit in limits) == (traced and bool(others)), route.name
        assert charged and carried == (charged if traced else 0)


def test_the_rate_limiter_reads_the_carried_trace_and_counts_nothing_for_it() -> None:
    from envoy.service.ratelimit.v3 import rls_pb2
    from opentelemetry import trace

    from meshgate.ratelimit.service import _carried_trace, to_request

    usage = {"entries": [{"key": "meshgate.usage", "value": "prompt_tokens"}, {"key": "tenant", "value": "a"}],
             "hits_addend": {"value": 7}}  # fmt: skip
    carried = {"entries": [{"key": contract.TRACE_KEY, "value": TRACEPARENT}]}
    pb = rls_pb2.RateLimitRequest(domain="meshgate", descriptors=[usage, carried])
    # the limiter sees the descriptor without its value: one descriptor for every call, which no rule
    # matches (nothing counted, one cache entry); the reply still has a status per descriptor
    assert [d.entries for d in to_request(pb).descriptors] == [
        (("meshgate.usage", "prompt_tokens"), ("tenant", "a")), ((contract.TRACE_KEY, ""),)]  # fmt: skip
    span = trace.get_current_span(_carried_trace(pb.SerializeToString())).get_span_context()
    assert (f"{span.trace_id:032x}", f"{span.span_id:016x}") == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")  # fmt: skip
    assert (
        _carried_trace(rls_pb2.RateLimitRequest(domain="d", descriptors=[usage]).SerializeToString()) is None
    )
    assert _carried_trace(b"\xff\xff" + contract.TRACE_KEY.encode()) is None  # not a message: no trace
