"""The JSON answer limit of an OpenAI model's routes (meshgate/xds/_usage.py, `json_answer_limit`): the
content-length regex that skips the usage reader for an answer of the limit or more, against every
number around a few limits, and what a model's routes carry."""

from __future__ import annotations

import random
import re

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.matching.v3 import extension_matcher_pb2

from meshgate.policy.model import Model
from meshgate.xds._usage import JSON_ANSWER_BYTES, JSON_FILTER, at_least, json_answer_limit
from tests.unit.test_extauthz_support import make_policy, policy_doc


@pytest.mark.parametrize("n", [1, 9, 10, 99, 100, 909, 990, 1_000_000, 8 << 20, 123_456_789, 1 << 30])
def test_at_least_matches_exactly_the_numbers_from_n_up(n: int) -> None:
    pattern = re.compile(at_least(n))
    rng = random.Random(n)
    numbers = {*range(2000), n - 1, n, n + 1, 10 * n, n // 10, *(rng.randrange(4 * n + 10) for _ in range(2000))}
    for x in numbers:
        for text in (str(x), "00" + str(x)):  # leading zeros read as the same number
            assert bool(pattern.match(text)) == (x >= n), (n, text)
    assert not pattern.match("") and not pattern.match("-" + str(n)) and not pattern.match(f"{n}x")


def model(**fields: object) -> Model:
    """The test policy's OpenAI model, with `fields`."""
    doc = policy_doc()
    chat = next(m for m in doc["models"] if m["name"] == "llama-chat")
    chat.update(fields)
    found = make_policy(doc).model("llama-chat")
    assert found is not None
    return found


@pytest.mark.parametrize(("fields", "limit"), [({}, JSON_ANSWER_BYTES), ({"max_json_answer_bytes": 3 << 20}, 3 << 20)])
def test_a_models_routes_hold_its_json_answers_up_to_its_limit(fields: dict[str, object], limit: int) -> None:
    route = rc.Route(name="chat")
    json_answer_limit(route, model(**fields))
    assert route.request_body_buffer_limit.value == limit
    per_route = extension_matcher_pb2.ExtensionWithMatcherPerRoute()
    config = rc.FilterConfig()
    assert route.typed_per_filter_config[JSON_FILTER].Unpack(config) and config.config.Unpack(per_route)
    (matcher,) = per_route.xds_matcher.matcher_list.matchers
    regex = matcher.predicate.single_predicate.value_match.safe_regex.regex
    assert regex == at_least(limit) and re.match(regex, str(limit)) and not re.match(regex, str(limit - 1))
