"""LLM usage from the response itself: the Envoy filters that read what an OpenAI-compatible backend
reports it used, and ask it to report it when streaming (docs/llm.md).

Four HTTP filters, after ratelimit and before the router, all native to Envoy 1.40, and a Lua filter
between 2 and 3 (`_usage_chunk`: drops the usage chunk a client did not ask for, after 4 read it):

1. `meshgate.llm.stream` (transform): `x-meshgate-stream` <- the request body's `stream`, and
   `x-meshgate-stream-options` <- its `stream_options` (any copies the client sent are removed first).
2. `meshgate.llm.include_usage` (match_delegate around transform): only when that header is `true`,
   merges `{"stream_options": {"include_usage": true}}` into the request body, so the backend ends the
   stream with a usage chunk even when the client did not ask for one.
3. `meshgate.llm.usage_json` (json_to_metadata, response rules, behind match_delegate): a JSON
   answer's `usage`, unless the answer is too large to hold (see `_json_usage`, `json_answer_limit`).
4. `meshgate.llm.usage_sse` (sse_to_metadata with the JSON content parser): an event stream's `usage`,
   read event by event as it passes (nothing is buffered but the event being parsed); the last one wins.

Both readers write `meshgate.usage:{tokens, prompt_tokens, completion_tokens, requests}`, and the string
`meshgate.usage:reported` = `reported`, where the rate limit filter's stream-end descriptors read them
(`_quotas`). The filters are disabled on the listener
and enabled per route (`route_filters`): on the OpenAI models' routes and on the catch-all route an
OpenAI request first matches (its model is in the body; Envoy builds a request's filter chain from the
first route it matches). So KServe v2 REST requests, routed by path, never get their JSON parsed or
their answers buffered.

sse_to_metadata and its JSON content parser are not in the xds-protos wheel: their configs are
`xds.type.v3.TypedStruct`s, with the field names checked against Envoy 1.40 (tests/e2e/test_llm_usage.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2 as j2m
from envoy.extensions.filters.http.transform.v3 import transform_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from envoy.type.matcher.v3 import regex_pb2 as envoy_regex_pb2
from google.protobuf import struct_pb2  # type: ignore[import-untyped]
from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
from google.protobuf.message import Message  # type: ignore[import-untyped]
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import matcher_pb2, regex_pb2, string_pb2
from xds.type.v3 import typed_struct_pb2

from meshgate import contract
from meshgate.policy.model import Model

from ._pb import pack
from ._usage_chunk import OPTIONS_HEADER, USAGE_CHUNK_FILTER, usage_chunk_filter

__all__ = ["FILTER_NAMES", "JSON_ANSWER_BYTES", "json_answer_limit", "route_filters", "usage_filters"]

STREAM_FILTER = "meshgate.llm.stream"
INCLUDE_USAGE_FILTER = "meshgate.llm.include_usage"
JSON_FILTER = "meshgate.llm.usage_json"
SSE_FILTER = "meshgate.llm.usage_sse"
FILTER_NAMES = (STREAM_FILTER, INCLUDE_USAGE_FILTER, USAGE_CHUNK_FILTER, JSON_FILTER, SSE_FILTER)

_TYPE = "type.googleapis.com/"
_SSE_TO_METADATA = _TYPE + "envoy.extensions.filters.http.sse_to_metadata.v3.SseToMetadata"
_JSON_PARSER = _TYPE + "envoy.extensions.content_parsers.json.v3.JsonContentParser"
_LARGE = r"^[0-9]{7,}$"  # a content-length of 1,000,000 bytes or more
# a JSON answer's content-type, parameters included: llama.cpp's server sends `application/json;
# charset=utf-8`, which json_to_metadata's exact list (`allow_content_types`) does not match (tried)
_JSON_TYPE = r"(?i)^application/json\s*(;.*)?$"
JSON_ANSWER_BYTES = 8 << 20  # a model's max_json_answer_bytes when unset
_COMPLETIONS = r"^(/openai)?/v1/(chat/)?completions([?].*)?$"
_MAX_EVENT_BYTES = 64 * 1024  # one SSE event (a usage chunk is ~200 bytes; a content chunk rarely 4 KiB)


def usage_filters() -> list[hcm_pb2.HttpFilter]:
    """The five filters, disabled until a route enables them (see `route_filters`). The usage chunk's
    Lua filter is before both readers: on the response it runs after them (`_usage_chunk`)."""
    filters = [
        (STREAM_FILTER, pack(_stream_flag())),
        (INCLUDE_USAGE_FILTER, pack(_include_usage())),
        (JSON_FILTER, pack(_json_usage())),
        (SSE_FILTER, _typed_struct(_SSE_TO_METADATA, _sse_usage())),
    ]
    native = [hcm_pb2.HttpFilter(name=name, typed_config=config, disabled=True) for name, config in filters]
    return [*native[:2], usage_chunk_filter(), *native[2:]]


def route_filters() -> Iterator[tuple[str, rc.FilterConfig]]:
    """(filter name, per-route config) enabling every usage filter on a route: a FilterConfig whose
    `config` is set but empty enables a filter disabled on the listener, with the listener's config."""
    for name in FILTER_NAMES:
        enabled = rc.FilterConfig()
        enabled.config.SetInParent()
        yield name, enabled


# --- request: ask the backend for usage in the stream ----------------------------------------------


def _stream_flag() -> transform_pb2.TransformConfig:
    set_flag = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=contract.STREAM_HEADER, value="%REQUEST_BODY(stream)%"),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    # the client's stream_options, for the usage chunk's filter (did it ask for usage?)
    set_options = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=OPTIONS_HEADER, value="%REQUEST_BODY(stream_options)%"),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    return transform_pb2.TransformConfig(
        request_transformation=transform_pb2.Transformation(
            headers_mutations=[
                mutation_rules_pb2.HeaderMutation(remove=contract.STREAM_HEADER),
                mutation_rules_pb2.HeaderMutation(remove=OPTIONS_HEADER),
                mutation_rules_pb2.HeaderMutation(append=set_flag),
                mutation_rules_pb2.HeaderMutation(append=set_options),
            ]
        )
    )


def _include_usage() -> extension_matcher_pb2.ExtensionWithMatcher:
    """transform merging stream_options.include_usage=true, skipped unless the stream header is true.
    The merge replaces a `stream_options` object the client sent (its other keys are dropped)."""
    body = struct_pb2.Struct()
    body.update({"stream_options": {"include_usage": True}})
    merge = transform_pb2.TransformConfig(
        request_transformation=transform_pb2.Transformation(
            body_transformation=transform_pb2.BodyTransformation(
                body_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=body),
                action=transform_pb2.BodyTransformation.MERGE,
            )
        )
    )
    streaming = _header_is(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=contract.STREAM_HEADER),
                           string_pb2.StringMatcher(exact="true"))  # fmt: skip
    # only (chat) completions take stream_options.include_usage: a Responses API stream ends with its
    # usage anyway (`response.completed`), and an embedding never streams
    regex = regex_pb2.RegexMatcher(regex=_COMPLETIONS, google_re2={})
    completions = string_pb2.StringMatcher(safe_regex=regex)
    path = _header_is(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=":path"), completions)
    both = _Predicate(and_matcher=_Predicate.PredicateList(predicate=[streaming, path]))
    return _skip_when(_Predicate(not_matcher=both), "envoy.filters.http.transform", merge)


_Predicate = matcher_pb2.Matcher.MatcherList.Predicate


def _header_is(source: Message, value: string_pb2.StringMatcher) -> matcher_pb2.Matcher.MatcherList.Predicate:
    """A predicate on one request or response header (`source`: its match input)."""
    single = _Predicate.SinglePredicate(
        input=extension_pb2.TypedExtensionConfig(name="header", typed_config=pack(source)), value_match=value
    )
    return _Predicate(single_predicate=single)


def _skip_when(
    predicate: matcher_pb2.Matcher.MatcherList.Predicate, name: str, config: Message
) -> extension_matcher_pb2.ExtensionWithMatcher:
    """match_delegate around filter `name`: skipped for a request (or response) matching `predicate`."""
    skip_action = pack(skip_action_pb2.SkipFilter())
    skip = matcher_pb2.Matcher.OnMatch(
        action=extension_pb2.TypedExtensionConfig(name="skip", typed_config=skip_action)
    )
    field_matcher = matcher_pb2.Matcher.MatcherList.FieldMatcher(predicate=predicate, on_match=skip)
    return extension_matcher_pb2.ExtensionWithMatcher(
        xds_matcher=matcher_pb2.Matcher(matcher_list=matcher_pb2.Matcher.MatcherList(matchers=[field_matcher])),
        extension_config=core_extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(config)),
    )


# --- response: read the usage the backend reported -------------------------------------------------


_J = j2m.JsonToMetadata


def _usage_rule(
    path: tuple[str, ...], key: str, value: struct_pb2.Value | None = None, kind: int = _J.NUMBER
) -> j2m.JsonToMetadata.Rule:
    """`<path>` present -> `meshgate.usage:<key>` = its number (or `value`, of type `kind`)."""
    write = _J.KeyValuePair(metadata_namespace=contract.USAGE_NAMESPACE, key=key, type=kind)
    if value is not None:
        write.value.CopyFrom(value)
    return _J.Rule(selectors=[_J.Selector(key=part) for part in path], on_present=write)


# where each shape keeps its usage: chat/completions and embeddings at `usage` (prompt_tokens,
# completion_tokens), the Responses API at `usage` of its JSON answer and at `response.usage` of its
# stream's `response.completed` event (input_tokens, output_tokens)
_RESPONSES_FIELDS = {contract.PROMPT_TOKENS: "input_tokens", contract.COMPLETION_TOKENS: "output_tokens"}


def _usage_rules() -> list[j2m.JsonToMetadata.Rule]:
    """One rule per usage number and shape, and `requests` = 1 once a response reported any."""
    total = contract.USAGE_FIELDS[contract.TOTAL_TOKENS]
    rules = []
    for at in (("usage",), ("response", "usage")):
        rules += [_usage_rule((*at, field), key) for key, field in contract.USAGE_FIELDS.items()]
        rules += [_usage_rule((*at, field), key) for key, field in _RESPONSES_FIELDS.items()]
        rules.append(_usage_rule((*at, total), contract.REQUESTS, struct_pb2.Value(number_value=1)))
        # the string flag the estimate charge reads (Envoy's metadata action reads strings only)
        reported = struct_pb2.Value(string_value=contract.USAGE_REPORTED)
        rules.append(_usage_rule((*at, total), contract.REPORTED_KEY, reported, _J.STRING))
    return rules


def _json_usage() -> extension_matcher_pb2.ExtensionWithMatcher:
    """json_to_metadata must hold a JSON answer whole, within Envoy's buffer limit (the listener's
    per_connection_buffer_limit_bytes, 1 MiB by default), past which Envoy answers 500. So an answer
    that says it is 1,000,000 bytes or more (content-length of 7 digits) passes through unread, and
    uncharged: the listener's default, left to the catch-all route; a model's routes raise both the
    limit and the skip to its max_json_answer_bytes (`json_answer_limit`). A stream is read event by
    event whatever its length (docs/llm.md)."""
    reader = _J(response_rules=_J.MatchRules(
        rules=_usage_rules(), allow_content_types=["application/json"],
        allow_content_types_regex=envoy_regex_pb2.RegexMatcher(regex=_JSON_TYPE)))  # fmt: skip
    length = http_inputs_pb2.HttpResponseHeaderMatchInput(header_name="content-length")
    large = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=_LARGE, google_re2={}))
    return _skip_when(_header_is(length, large), "envoy.filters.http.json_to_metadata", reader)


def json_answer_limit(route: rc.Route, model: Model) -> None:
    """On a route of `model` (which reads usage): Envoy's buffer limit of the stream raised to the
    model's `max_json_answer_bytes`, and the JSON reader skipped for an answer of that many bytes or
    more. `request_body_buffer_limit` is the limit of both directions of the stream in Envoy 1.40 (a
    1.2 MB answer is read with it, and is a 500 without it; tried), taken from the route the request
    ends on: an OpenAI request first matches the catch-all, which keeps the listener's 1 MiB and
    `_json_usage`'s skip. The request stays bounded by ext_authz's `max_request_bytes` (413 above it)."""
    limit = model.max_json_answer_bytes or JSON_ANSWER_BYTES
    route.request_body_buffer_limit.value = limit
    length = http_inputs_pb2.HttpResponseHeaderMatchInput(header_name="content-length")
    large = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=at_least(limit), google_re2={}))
    skip = _skip_when(_header_is(length, large), "envoy.filters.http.json_to_metadata", _J())
    per_route = extension_matcher_pb2.ExtensionWithMatcherPerRoute(xds_matcher=skip.xds_matcher)
    route.typed_per_filter_config[JSON_FILTER].CopyFrom(pack(rc.FilterConfig(config=pack(per_route))))


def at_least(n: int) -> str:
    """A regex of the decimal numbers >= `n` (leading zeros allowed): more digits than `n`, or `n`'s
    own digits up to one that is larger, then any."""
    digits = str(n)
    k = len(digits)
    larger = [f"[1-9][0-9]{{{k},}}", digits]
    for i, d in enumerate(digits):
        if d != "9":
            larger.append(f"{digits[:i]}[{int(d) + 1}-9][0-9]{{{k - i - 1}}}")
    return f"^0*({'|'.join(larger)})$"


def _sse_usage() -> dict[str, object]:
    """SseToMetadata as plain JSON: `response_rules {content_parser, max_event_size}`; the JSON content
    parser's rules are json_to_metadata's Rule, each wrapped as `{rule: ...}` (last match wins)."""
    rules = [{"rule": MessageToDict(rule, preserving_proto_field_name=True)} for rule in _usage_rules()]
    parser = {
        "name": "envoy.content_parsers.json",
        "typed_config": _typed_struct_json(_JSON_PARSER, {"rules": rules}),
    }
    return {"response_rules": {"content_parser": parser, "max_event_size": _MAX_EVENT_BYTES}}


def _typed_struct_json(type_url: str, value: dict[str, object]) -> dict[str, object]:
    return {"@type": _TYPE + "xds.type.v3.TypedStruct", "type_url": type_url, "value": value}


def _typed_struct(type_url: str, value: dict[str, object]) -> object:
    config = typed_struct_pb2.TypedStruct(type_url=type_url)
    config.value.update(value)
    return pack(config)
