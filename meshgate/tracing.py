"""OpenTelemetry for `meshgate serve`, configured from the standard OTEL_* environment; off when unset.

Tracing is on when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set (or
OTEL_TRACES_EXPORTER=otlp), unless OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none. Then:

- spans go over OTLP/HTTP in OTLP's JSON encoding (OTEL_EXPORTER_OTLP_PROTOCOL=http/json, the only
  protocol meshgate speaks; another is refused at start) to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it
  is, or OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces, with OTEL_EXPORTER_OTLP_(TRACES_)HEADERS and
  OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT (milliseconds, as the specification says); the exporter,
  opentelemetry-python's own (opentelemetry-exporter-otlp-json-http), reads the certificates and the
  compression itself. Why not OTLP/gRPC or http/protobuf: docs/operations.md;
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
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .clip import clip

__all__ = ["configure", "enabled", "export_settings", "genai_request", "genai_usage", "incoming"]

log = logging.getLogger("meshgate.tracing")
_PROPAGATOR = TraceContextTextMapPropagator()
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL = "http/json"
DEFAULT_ENDPOINT = "http://localhost:4318"  # the OTLP/HTTP port of the specification
DEFAULT_TIMEOUT_MS = 10_000


def enabled(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (see the module doc)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return exporter == "otlp" or any(env.get(name, "").strip() for name in _ENDPOINTS)


def _first(env: Mapping[str, str], suffix: str) -> tuple[str, str] | None:
    """(variable, value) of OTEL_EXPORTER_OTLP_TRACES_<suffix>, else OTEL_EXPORTER_OTLP_<suffix>."""
    for name in (f"OTEL_EXPORTER_OTLP_TRACES_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}"):
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def export_settings(env: Mapping[str, str]) -> tuple[str, float, dict[str, str]]:
    """(URL, timeout in seconds, headers) of the span export that `env` describes. Raises ValueError
    for a protocol other than http/json, an endpoint that is not an http(s) URL, a bad timeout."""
    protocol = _first(env, "PROTOCOL")
    if protocol is not None and protocol[1].lower() != PROTOCOL:
        raise ValueError(
            f"{protocol[0]}={protocol[1]!r}: meshgate exports spans over OTLP/HTTP in the JSON encoding "
            f"only: set {PROTOCOL} (or leave it unset) and point OTEL_EXPORTER_OTLP_ENDPOINT at the "
            "collector's OTLP/HTTP receiver (port 4318 by default); docs/operations.md says why"
        )
    if (traces := env.get(_ENDPOINTS[0], "").strip()) != "":
        name, url = _ENDPOINTS[0], traces  # the traces endpoint is used as it is
    else:
        name, base = _ENDPOINTS[1], env.get(_ENDPOINTS[1], "").strip() or DEFAULT_ENDPOINT
        url = base.rstrip("/") + "/v1/traces"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{name}: an http:// or https:// URL is needed for OTLP/HTTP, not {url!r}")
    millis, timeout = float(DEFAULT_TIMEOUT_MS), _first(env, "TIMEOUT")
    if timeout is not None:
        try:
            millis = float(timeout[1])
        except ValueError:
            millis = -1.0
        if not 0 < millis < float("inf"):
            raise ValueError(f"{timeout[0]}={timeout[1]!r}: a positive number of milliseconds is needed")
    headers = _first(env, "HEADERS")
    return url, millis / 1000, _headers(headers[1]) if headers is not None else {}


def _headers(value: str) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_HEADERS: `key=value` pairs separated by commas, values percent-encoded (the
    specification's format, parsed by the SDK's own reader)."""
    from opentelemetry.util.re import parse_env_headers

    return dict(parse_env_headers(value, liberal=True))


def configure(env: Mapping[str, str]) -> Any | None:
    """The SDK's TracerProvider with the OTLP/HTTP JSON exporter, set as the process's global provider;
    None when tracing is off, or when the exporter cannot be imported (a broken install: logged once
    as `tracing off: <reason>`, the process serves without tracing rather than not at all). Raises
    ValueError for a setting meshgate cannot honour (export_settings)."""
    if not enabled(env):
        return None
    url, timeout, headers = export_settings(env)
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from . import __version__

    try:
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        log.error("tracing off: the OTLP/HTTP JSON exporter cannot be imported (%s); reinstall meshgate", exc)
        return None
    name = env.get("OTEL_SERVICE_NAME") or "meshgate"
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES; the sampler comes from OTEL_TRACES_SAMPLER
    resource = Resource.create({SERVICE_NAME: name, SERVICE_VERSION: __version__})
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=url, headers=headers, timeout=timeout)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    where = urlsplit(url)  # logged without user info, query or headers: they may hold secrets
    shown = f"{where.scheme}://{where.netloc.rpartition('@')[2]}{where.path}"
    log.info("tracing: OTLP/HTTP JSON to %s as service %s", shown, name)
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
    out: dict[str, str | int] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": clip(target.model),
    }
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
            out["gen_ai.request.model"] = clip(entries.get("model", ""))
    return out
