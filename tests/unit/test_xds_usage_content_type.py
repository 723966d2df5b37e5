"""The JSON usage reader accepts a JSON answer whatever parameters its content-type carries.

json_to_metadata compares `allow_content_types` with the whole header value: llama.cpp's server answers
`application/json; charset=utf-8`, which the exact list alone refused (`resp.mismatched_content_type`),
so its JSON answers went uncharged (found by tests/e2e/test_llm_real_server.py against llama-server).
The reader's regex is RE2; the pattern uses only syntax that Python's `re` reads the same way.
"""

from __future__ import annotations

import re

import pytest
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2 as j2m

from meshgate.xds._usage import JSON_FILTER, usage_filters


def json_reader() -> j2m.JsonToMetadata:
    (listener_filter,) = [f for f in usage_filters() if f.name == JSON_FILTER]
    wrapped = extension_matcher_pb2.ExtensionWithMatcher()
    assert listener_filter.typed_config.Unpack(wrapped)
    reader = j2m.JsonToMetadata()
    assert wrapped.extension_config.typed_config.Unpack(reader)
    return reader


def accepted(content_type: str) -> bool:
    rules = json_reader().response_rules
    if content_type in rules.allow_content_types:
        return True
    return re.search(rules.allow_content_types_regex.regex, content_type) is not None


@pytest.mark.parametrize("content_type", [
    "application/json",                   # vLLM, TGI, KServe (FastAPI / axum), OpenAI
    "application/json; charset=utf-8",    # llama.cpp's llama-server
    "application/json;charset=UTF-8",
    "Application/JSON",
])  # fmt: skip
def test_a_json_answer_is_read_whatever_its_parameters(content_type: str) -> None:
    assert accepted(content_type)


@pytest.mark.parametrize("content_type", ["text/event-stream", "application/jsonl", "text/plain", "",
                                          "application/x-ndjson", "text/html; application/json"])  # fmt: skip
def test_other_content_types_are_not_read_as_json(content_type: str) -> None:
    assert not accepted(content_type)
