"""OpenTelemetry for `meshgate serve`, configured from the standard OTEL_* environment; off when unset.

Tracing is on when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set (or
OTEL_TRACES_EXPORTER=otlp), unless OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none. Then:

- spans go to an OTLP exporter: gRPC (OTEL_EXPORTER_OTLP_PROTOCOL=grpc, the default) or HTTP
  (`http/protobuf`, with opentelemetry-exporter-otlp-proto-http installed); the exporter reads its
  endpoint, headers, timeout, compression and certificates from the OTEL_EXPORTER_OTLP_* variables;
- the sampler is OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default parentbased_always_on: a
  request Envoy sampled is traced, one it did not is not);
- the resource is OTEL_SERVICE_NAME (default `meshgate`) and OTEL_RESOURCE_ATTRIBUTES, with
  service.version;
- spans are batched (OTEL_BSP_*) and flushed when meshgate stops.

The services get the provider from the composition root (meshgate/server.py) and make their spans with
it: `extauthz.check`, `ratelimit.should_rate_limit`, `xds.push`, each continuing the trace context of
the incoming call (its gRPC metadata: Envoy's ext_authz and rate limit calls carry their span's
`traceparent` there). `incoming` reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "STALE_OTLP_PROTOS",
    "configure",
    "enabled",
    "genai_request",
    "genai_usage",
    "incoming",
    "otlp_protos_current",
]

log = logging.getLogger("meshgate.tracing")
_PROPAGATOR = TraceContextTextMapPropagator()
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def enabled(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (see the module doc)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return exporter == "otlp" or any(env.get(name, "").strip() for name in _ENDPOINTS)


STALE_OTLP_PROTOS = (
    "the OTLP protobuf modules under opentelemetry/proto are the old ones xds-protos also ships (it "
    "overwrote opentelemetry-proto's files when pip installed it later); repair the venv with: "
    "pip install --force-reinstall --no-deps opentelemetry-proto"
)


def otlp_protos_current() -> bool:
    """False when xds-protos' stale copy of the OTLP protos (no InstrumentationScope) is what Python
    imports: both wheels write opentelemetry/proto/..., the last one installed wins, and a single
    `pip install` puts xds-protos last. The SDK's OTLP exporter cannot load on the stale copy."""
    from opentelemetry.proto.common.v1 import common_pb2

    return hasattr(common_pb2, "InstrumentationScope")


def configure(env: Mapping[str, str]) -> Any | None:
    """The SDK's TracerProvider with an OTLP exporter, set as the process's global provider; None when
    tracing is off, or when the OTLP protos are stale (logged once as an error naming the repair: the
    process serves without tracing rather than not at all). Raises ValueError for a protocol whose
    exporter is not installed."""
    if not enabled(env):
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from . import __version__

    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc").strip().lower()  # fmt: skip
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: meshgate exports grpc or http/protobuf")
    if not otlp_protos_current():
        log.error("tracing off: %s", STALE_OTLP_PROTOS)
        return None
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,no-redef,unused-ignore]
                OTLPSpanExporter,
            )
        except ImportError:
            need = "opentelemetry-exporter-otlp-proto-http"
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf needs {need}") from None
    name = env.get("OTEL_SERVICE_NAME") or "meshgate"
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES; the sampler comes from OTEL_TRACES_SAMPLER
    resource = Resource.create({SERVICE_NAME: name, SERVICE_VERSION: __version__})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    endpoint = next((env[n] for n in _ENDPOINTS if env.get(n)), "the exporter's default endpoint")
    log.info("tracing: OTLP/%s to %s as service %s", protocol, endpoint, name)
    return provider


def incoming(metadata: Any, fallback: Mapping[str, str] | None = None) -> otel_context.Context | None:
    """The trace context a call carries: its gRPC metadata's `traceparent` (and `tracestate`), else
    `fallback`'s (an HTTP request's headers); None when neither has one (a new trace)."""
    carrier = {key: value for key, value in metadata or () if key in ("traceparent", "tracestate")}
    if "traceparent" not in carrier:
        if fallback is None or "traceparent" not in fallback:
            return None
        carrier = {k: fallback[k] for k in ("traceparent", "tracestate") if k in fallback}
    return _PROPAGATOR.extract(carrier=carrier)


# --- GenAI semantic conventions (OpenTelemetry gen_ai.*), where a request is an LLM call ------------

_OPERATIONS = (  # OpenAI path suffix -> gen_ai.operation.name
    ("/chat/completions", "chat"),
    ("/completions", "text_completion"),
    ("/embeddings", "embeddings"),
    ("/responses", "chat"),
)


def genai_request(path: str, target: Any) -> dict[str, str | int]:
    """gen_ai.operation.name, gen_ai.request.model and gen_ai.request.max_tokens of an OpenAI call
    (`target`: extauthz's Target); nothing for other requests (KServe, Triton: not GenAI calls)."""
    if target is None or not target.model or not path.startswith(("/v1/", "/openai/v1/")):
        return {}
    bare = path.split("?", 1)[0]
    operation = next((name for suffix, name in _OPERATIONS if bare.endswith(suffix)), None)
    if operation is None:
        return {}
    out: dict[str, str | int] = {"gen_ai.operation.name": operation, "gen_ai.request.model": target.model}
    if target.max_tokens is not None:
        out["gen_ai.request.max_tokens"] = target.max_tokens
    return out


_USAGE = {"prompt_tokens": "gen_ai.usage.input_tokens", "completion_tokens": "gen_ai.usage.output_tokens"}


def genai_usage(descriptors: Any) -> dict[str, str | int]:
    """gen_ai.usage.input_tokens / output_tokens and gen_ai.request.model from the chargeback
    descriptors (`meshgate.usage=<kind>, tenant, model` with the backend's usage as hits) a rate limit
    call carries at stream end (meshgate/contract.py)."""
    from .contract import USAGE_KEY

    out: dict[str, str | int] = {}
    for d in descriptors:
        entries = dict(d.entries)
        attribute = _USAGE.get(entries.get(USAGE_KEY, ""))
        if attribute is not None and d.hits_addend is not None:
            out[attribute] = d.hits_addend
            out["gen_ai.request.model"] = entries.get("model", "")
    return out
