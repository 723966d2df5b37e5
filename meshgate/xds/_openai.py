"""OpenAI's API at the gateway: the 429 in OpenAI's shape, and the model name a backend serves.

- `local_reply()`: the listener's local reply config. A request under OpenAI's paths refused by the
  rate limit filter (response flag RL) gets `{"error": {"message", "type": "rate_limit_error", "param",
  "code": "rate_limit_exceeded", "quota"}}` naming the quotas that refused it (over their limit: the
  `dynamic_metadata` of meshgate ratelimit's answer, contract.REFUSED_KEY, which Envoy's rate limit
  filter stores under its own name before it sends the 429; null for a rule without a name) and
  `Retry-After` from meshgate ratelimit's `X-RateLimit-Reset` (the seconds until the window of the
  quota that refused ends; absent with `gateway.ratelimit.response_headers: none`). The rate limit
  filter's own 429 has no body: OpenAI's SDKs showed only "Error code: 429". Other refusals keep theirs
  (extauthz shapes its own). A native quota's 429 (Envoy's local rate limit, docs/native.md) is matched
  by its response code details (it sets the RL flag only after its reply is mapped): the same body,
  the quota named from its filter's `x-meshgate-quota` header, and elsewhere no body, like the rate
  limit filter's.
- `SERVED_NAME_FILTER`: a transform filter that merges `{"model": <served_name>}` into the request body
  of a version whose backend serves another name (`versions[].served_name`). Disabled on the listener
  and enabled per route like the usage filters (`_usage`); the name is the per-route config of the
  version's route or of its weighted cluster (Envoy picks the weighted cluster with the route, so each
  version's requests get their own name).
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.transform.v3 import transform_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import struct_pb2  # type: ignore[import-untyped]

from meshgate import contract

from ._native_quotas import QUOTA_HEADER, native_refusal
from ._pb import pack

__all__ = ["SERVED_NAME_FILTER", "local_reply", "served_name", "served_name_filter"]

SERVED_NAME_FILTER = "meshgate.llm.served_name"
RATE_LIMITED = "RL"  # Envoy's response flag for a request the rate limit service refused
RESET_HEADER = contract.RESET_HEADER
_REFUSED = contract.metadata(contract.RATELIMIT_NAMESPACE, contract.REFUSED_KEY)


def local_reply() -> hcm_pb2.LocalReplyConfig:
    """The HCM's local reply config: OpenAI's 429 for OpenAI's paths (others unchanged)."""
    paths = [
        accesslog_pb2.AccessLogFilter(
            header_filter=accesslog_pb2.HeaderFilter(
                header=rc.HeaderMatcher(
                    name=":path", string_match=string_pb2.StringMatcher(prefix=prefix)
                )
            )
        )
        for prefix in contract.OPENAI_PREFIXES
    ]
    limited = accesslog_pb2.AccessLogFilter(
        response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=[RATE_LIMITED])
    )
    openai = accesslog_pb2.AccessLogFilter(or_filter=accesslog_pb2.OrFilter(filters=paths))
    retry_after = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="retry-after", value=f"%RESP({RESET_HEADER})%"),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )

    def mapper(*filters: accesslog_pb2.AccessLogFilter, quota: str) -> hcm_pb2.ResponseMapper:
        body = struct_pb2.Struct()
        body.update(contract.openai_429(quota, f"%RESP({RESET_HEADER})%"))
        return hcm_pb2.ResponseMapper(
            filter=accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=filters)),
            body_format_override=substitution_format_string_pb2.SubstitutionFormatString(json_format=body),
            headers_to_add=[retry_after],
        )

    # a native quota's 429 (docs/native.md): no RL flag yet when its reply is mapped; its quota's name
    # in a header; elsewhere no body, as the rate limit filter's 429
    nothing = base_pb2.DataSource(inline_string="")
    empty = substitution_format_string_pb2.SubstitutionFormatString(text_format_source=nothing)
    return hcm_pb2.LocalReplyConfig(mappers=[
        mapper(limited, openai, quota=_REFUSED),
        mapper(native_refusal(), openai, quota=f"%RESP({QUOTA_HEADER})%"),
        hcm_pb2.ResponseMapper(filter=native_refusal(), body_format_override=empty),
    ])  # fmt: skip


def served_name_filter() -> hcm_pb2.HttpFilter:
    """The transform filter, disabled, without a transformation of its own (routes give it theirs)."""
    return hcm_pb2.HttpFilter(
        name=SERVED_NAME_FILTER, typed_config=pack(transform_pb2.TransformConfig()), disabled=True
    )


def served_name(name: str) -> transform_pb2.TransformConfig:
    """The per-route config merging `{"model": name}` into the request body."""
    body = struct_pb2.Struct()
    body.update({"model": name})
    return transform_pb2.TransformConfig(
        request_transformation=transform_pb2.Transformation(
            body_transformation=transform_pb2.BodyTransformation(
                body_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=body),
                action=transform_pb2.BodyTransformation.MERGE,
            )
        )
    )
