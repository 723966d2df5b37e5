"""A minimal OTLP trace receiver for the tests: a fake standing in for an OpenTelemetry Collector.

It speaks the two OTLP trace transports a collector serves (https://opentelemetry.io/docs/specs/otlp/):

- OTLP/HTTP, `POST /v1/traces` with `Content-Type: application/json`: OTLP's JSON encoding of an
  ExportTraceServiceRequest (lowerCamelCase fields, trace and span ids in hex, 64-bit integers as
  decimal strings or numbers, enums as integers). What meshgate exports (meshgate/tracing.py). It
  answers 200 with an empty ExportTraceServiceResponse (`{}`); another path is 404, another content
  type 415 (the protobuf encoding is not implemented here).
- OTLP/gRPC, `opentelemetry.proto.collector.trace.v1.TraceService/Export`: the protobuf encoding. What
  the gateway Envoy's OpenTelemetry tracer exports. The bytes are read with a generic protobuf wire
  reader and OTLP's field numbers (opentelemetry-proto's trace.proto, common.proto, resource.proto;
  stable since OTLP 0.x, when `scope_spans` was still `instrumentation_library_spans`, the same field
  2), not with generated classes: the only `opentelemetry.proto` modules a fresh install has are the
  stale copy xds-protos ships (docs/operations.md).

Both give the same `Span` records, ids in hex.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

__all__ = ["OtlpReceiver", "Span"]

_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


@dataclass(frozen=True)
class Span:
    service: str  # the resource's service.name
    name: str
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: int  # OTLP's SpanKind: 2 server, 3 client, 4 producer
    attributes: dict[str, Any] = field(hash=False)
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each link
    transport: str  # "http/json" or "grpc"


class OtlpReceiver:
    """Started with `start()` (HTTP and gRPC on free ports of 127.0.0.1), stopped with `stop()`."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.http_requests: list[dict[str, str]] = []  # the headers of each OTLP/HTTP request
        self._lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None
        self._grpc: grpc.Server | None = None
        self.http_port = self.grpc_port = 0

    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path != "/v1/traces":
                    return self._answer(404, b"")
                if self.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                    return self._answer(415, b"")
                receiver._add_json(json.loads(body), {k.lower(): v for k, v in self.headers.items()})
                return self._answer(200, b"{}")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

        def export(request: bytes, context: Any) -> bytes:
            self._add_protobuf(request)
            return b""  # an empty ExportTraceServiceResponse

        handler = grpc.method_handlers_generic_handler(
            _SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
        )
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(None)

    def of(self, service: str, name: str | None = None) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.service == service and (name is None or s.name == name)]

    # --- OTLP/JSON ---------------------------------------------------------------------------------

    def _add_json(self, request: dict[str, Any], headers: dict[str, str]) -> None:
        spans = []
        for resource_spans in request.get("resourceSpans", []):
            resource = _json_attributes(resource_spans.get("resource", {}).get("attributes", []))
            for scope in resource_spans.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    spans.append(Span(
                        service=str(resource.get("service.name", "")), name=span["name"],
                        trace_id=span["traceId"].lower(), span_id=span["spanId"].lower(),
                        parent_span_id=span.get("parentSpanId", "").lower(), kind=int(span.get("kind", 0)),
                        attributes=_json_attributes(span.get("attributes", [])),
                        links=tuple((link["traceId"].lower(), link["spanId"].lower()) for link in span.get("links", [])),
                        transport="http/json",
                    ))  # fmt: skip
        with self._lock:
            self.http_requests.append(headers)
            self.spans += spans

    # --- OTLP/gRPC (protobuf) ----------------------------------------------------------------------

    def _add_protobuf(self, request: bytes) -> None:
        spans = []
        for resource_spans in _values(request, 1):  # ExportTraceServiceRequest.resource_spans
            resource = b"".join(_values(resource_spans, 1))  # ResourceSpans.resource
            service = _pb_attributes(_values(resource, 1)).get("service.name", "")  # Resource.attributes
            for scope in _values(resource_spans, 2):  # ResourceSpans.scope_spans
                for span in _values(scope, 2):  # ScopeSpans.spans
                    fields = _fields(span)
                    one = {number: value for number, _, value in fields}
                    links = [_fields(link) for number, _, link in fields if number == 13]
                    spans.append(Span(
                        service=str(service), name=bytes(one.get(5, b"")).decode(),
                        trace_id=bytes(one.get(1, b"")).hex(), span_id=bytes(one.get(2, b"")).hex(),
                        parent_span_id=bytes(one.get(4, b"")).hex(), kind=int(one.get(6, 0)),
                        attributes=_pb_attributes([v for n, _, v in fields if n == 9]),
                        links=tuple((bytes(_one(link, 1)).hex(), bytes(_one(link, 2)).hex()) for link in links),
                        transport="grpc",
                    ))  # fmt: skip
        with self._lock:
            self.spans += spans


def _json_attributes(attributes: list[dict[str, Any]]) -> dict[str, Any]:
    return {a["key"]: _json_value(a.get("value", {})) for a in attributes}


def _json_value(value: dict[str, Any]) -> Any:
    if "intValue" in value:
        return int(value["intValue"])  # a decimal string in proto3 JSON; a number is accepted too
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [_json_value(v) for v in value["arrayValue"].get("values", [])]
    for key in ("stringValue", "boolValue"):
        if key in value:
            return value[key]
    return None


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field of a protobuf message, in order."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"protobuf wire type {wire} (groups) is not OTLP's")
        out.append((number, wire, value))
    if i != len(buf):
        raise ValueError("truncated protobuf message")
    return out


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _values(buf: bytes, number: int) -> Iterator[bytes]:
    return (value for n, _, value in _fields(buf) if n == number)


def _one(fields: list[tuple[int, int, Any]], number: int) -> Any:
    return next((value for n, _, value in fields if n == number), b"")


def _pb_attributes(key_values: Any) -> dict[str, Any]:
    """KeyValue (key 1, value 2) messages -> {key: AnyValue's value}."""
    out: dict[str, Any] = {}
    for kv in key_values:
        fields = _fields(kv)
        out[bytes(_one(fields, 1)).decode()] = _pb_value(_one(fields, 2))
    return out


def _pb_value(any_value: bytes) -> Any:
    """AnyValue: string 1, bool 2, int 3 (int64 varint), double 4, array 5 (ArrayValue.values 1)."""
    for number, _, value in _fields(any_value):
        if number == 1:
            return bytes(value).decode()
        if number == 2:
            return bool(value)
        if number == 3:
            return value - (1 << 64) if value >= 1 << 63 else value
        if number == 4:
            return struct.unpack("<d", value)[0]
        if number == 5:
            return [_pb_value(v) for v in _values(value, 1)]
    return None
