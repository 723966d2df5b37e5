"""Request bodies at the gateway: which routes ext_authz buffers, and how much of a body a model takes.

The ext_authz filter buffers a body only where the model is read from it:

- OpenAI JSON (`/v1/chat/completions`, ...): the whole body, up to `gateway.ext_authz.max_request_bytes`
  (the listener's filter settings; such a request first matches the catch-all route).
- Triton / KServe gRPC (`/inference.GRPCInferenceService/...`): only the head of the first message, the
  bytes that hold its `model_name` and `model_version` (fields 1 and 2, written first by protobuf
  serializers): `allow_partial_message`, so a large tensor streams on and a gRPC stream
  (ModelStreamInfer) is checked on the head of its first message. Route `meshgate|grpc`.
- KServe v2 REST (`/v2/models/{m}/...`): nothing; the model is in the path. The body streams to the
  backend. Its size is the model's `max_request_bytes`, checked on the declared Content-Length by two
  routes ahead of the model's others: above it a JSON 413 `body_too_large`; a POST with no
  Content-Length (chunked, or h2 without one) a JSON 411 `length_required` (a streamed body of
  unknown length could not be bounded).

ext_authz still runs first on these answers (a route's direct response is the router's, the last filter):
an unauthenticated request gets its 401 before the 413.
"""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import range_pb2

from meshgate import contract
from meshgate.policy.model import Model, Policy

from ._pb import pack

__all__ = [
    "EXTAUTHZ_FILTER",
    "GRPC_ROUTE",
    "grpc_head_bytes",
    "grpc_route",
    "json_answer",
    "size_routes",
    "stream_body",
    "stream_refusal",
]

EXTAUTHZ_FILTER = "envoy.filters.http.ext_authz"
GRPC_PREFIX = "/inference.GRPCInferenceService/"
GRPC_ROUTE = "meshgate|grpc"
_INT64_MAX = (1 << 63) - 1
_VARINT = 3  # a field's tag (1 byte for fields 1 and 2) and its length (2 bytes up to 16383)


def grpc_head_bytes(policy: Policy) -> int:
    """Bytes of a gRPC message (5-byte frame prefix included) that hold the longest model name and pin
    of the policy, and the next field's tag: enough for extauthz to read the model and to know whether
    a version follows. A message naming a model no policy model has may be cut inside its name
    (extauthz refuses it)."""
    names = [len(m.name.encode()) for m in policy.models] or [0]
    pins = [len(pin.encode()) for m in policy.models for v in m.versions for pin in v.pins] or [0]
    return 5 + (_VARINT + max(names)) + (_VARINT + max(pins)) + 2


def stream_body() -> ext_authz_pb2.ExtAuthzPerRoute:
    """ext_authz on a route whose model is in the path: check the headers, never buffer the body."""
    return ext_authz_pb2.ExtAuthzPerRoute(
        check_settings=ext_authz_pb2.CheckSettings(disable_request_body_buffering=True)
    )


def _grpc_head(policy: Policy) -> ext_authz_pb2.ExtAuthzPerRoute:
    buffer = ext_authz_pb2.BufferSettings(
        max_request_bytes=grpc_head_bytes(policy), allow_partial_message=True, pack_as_bytes=True
    )
    return ext_authz_pb2.ExtAuthzPerRoute(
        check_settings=ext_authz_pb2.CheckSettings(with_request_body=buffer)
    )


def json_answer(status: int, error: str, message: str) -> rc.DirectResponseAction:
    body = json.dumps({"error": error, "message": message}, separators=(",", ":")).encode()
    return rc.DirectResponseAction(status=status, body=base_pb2.DataSource(inline_bytes=body))


def json_type() -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="content-type", value="application/json"),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def grpc_route(policy: Policy, *, extauthz: bool) -> rc.Route:
    """Matched by every gRPC inference call before ext_authz names its model: ext_authz reads the head
    of the message here; what still matches after that (no model route) is a 404 (UNIMPLEMENTED)."""
    route = rc.Route(
        name=GRPC_ROUTE,
        match=rc.RouteMatch(prefix=GRPC_PREFIX),
        direct_response=rc.DirectResponseAction(
            status=404, body=base_pb2.DataSource(inline_bytes=contract.NO_ROUTE_BODY.encode())
        ),
    )
    if extauthz:
        route.typed_per_filter_config[EXTAUTHZ_FILTER].CopyFrom(pack(_grpc_head(policy)))
    return route


def stream_refusal(model: Model) -> rc.Route:
    """A v2-grpc model without `stream_infer`: its ModelStreamInfer, matched after ext_authz named the
    model, is refused (403, which a gRPC client reads as PERMISSION_DENIED)."""
    headers = [
        rc.HeaderMatcher(name=contract.MODEL_HEADER, string_match=string_pb2.StringMatcher(exact=model.name))
    ]
    return rc.Route(
        name=f"{model.name}|stream_forbidden",
        match=rc.RouteMatch(path=GRPC_PREFIX + "ModelStreamInfer", headers=headers),
        direct_response=json_answer(
            403,
            "stream_forbidden",
            f"model {model.name} does not take ModelStreamInfer (policy stream_infer)",
        ),
    )


def size_routes(model: Model) -> list[rc.Route]:
    """A KServe v2 REST request above the model's `max_request_bytes` (declared), or a POST that
    declares no length: answered here, before any byte of its body is read."""
    prefix = f"/v2/models/{model.name}"
    limit = model.max_request_bytes
    too_large = rc.HeaderMatcher(
        name="content-length", range_match=range_pb2.Int64Range(start=limit + 1, end=_INT64_MAX)
    )
    no_length = rc.HeaderMatcher(name="content-length", present_match=False)
    post = rc.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact="POST"))
    answers = [
        (
            "body_too_large",
            [too_large],
            json_answer(
                413, "body_too_large", f"model {model.name} takes request bodies of at most {limit} bytes"
            ),
        ),
        (
            "length_required",
            [post, no_length],
            json_answer(411, "length_required", "a request body to a v2 REST model needs a Content-Length"),
        ),
    ]
    return [
        rc.Route(
            name=f"{model.name}|{name}",
            match=rc.RouteMatch(path_separated_prefix=prefix, headers=headers),
            direct_response=answer,
            response_headers_to_add=[json_type()],
        )
        for name, headers, answer in answers
    ]
