"""Token quotas and chargeback with a real OpenAI-compatible server that nobody here wrote.

The backend is `transformers serve` (in the test extra: it runs everywhere), llama.cpp's `llama-server`
or llama-cpp-python's server, each serving a tiny model written at start (tests/harness/tiny_hf.py,
tiny_gguf.py: random weights from a fixed seed, no download). The chain is real: the official `openai`
SDK -> Envoy 1.40 configured by `meshgate serve` over ADS -> ext_authz -> ratelimit (counters in a real
Redis) -> the LLM usage filters -> the server. What the gateway charges and counts must equal, exactly,
the usage the server itself reported: in the JSON answer's `usage`, or in the last SSE chunk of a stream
(docs/llm.md).

The llama.cpp servers are skipped with the reason where they are not installed (they compile llama.cpp:
not in the test extra). The last test gives the vLLM-shaped stand-in llama.cpp's JSON content-type, so
that what llama-server found is checked on every machine.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from meshgate.extauthz.prompt import estimate_tokens
from meshgate.xds.bootstrap import envoy_bootstrap
from tests.e2e.test_llm_usage import LIMIT, MODEL, Gateway, llm_policy, start_gateway
from tests.harness.envoy import Envoy
from tests.harness.llm_server import LlamaCppPython, LlamaServer, RealLLMServer, TransformersServe
from tests.harness.meshgate import Meshgate
from tests.harness.procs import free_port, http_get, wait_until
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack

KINDS = ("requests", "prompt_tokens", "completion_tokens")


@dataclass
class RealGateway:
    gateway: Gateway
    server: RealLLMServer

    def direct(self) -> openai.OpenAI:
        """The SDK straight to the server (what it reports, with no gateway in between)."""
        return openai.OpenAI(base_url=f"{self.server.url}/v1", api_key="unused", max_retries=0, timeout=30)

    def usage_total(self, tenant: str = "acme") -> dict[str, float]:
        """meshgate_ratelimit_usage_total{kind, tenant, model} for one tenant and the model."""
        status, body = http_get(self.gateway.meshgate.metrics_url)
        assert status == 200
        found = dict.fromkeys(KINDS, 0.0)
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                labels = sample.labels
                if (sample.name == "meshgate_ratelimit_usage_total" and labels.get("tenant") == tenant
                        and labels.get("model") == MODEL and labels.get("kind") in found):  # fmt: skip
                    found[labels["kind"]] = sample.value
        return found

    def counted(self, expected: dict[str, int], tenant: str = "acme") -> None:
        """Wait until the chargeback counters equal `expected` (they are written at stream end)."""
        want = {kind: float(value) for kind, value in expected.items()}
        wait_until(lambda: self.usage_total(tenant) == want, 10, what=f"usage of {tenant} == {want}",
                   proc=self.gateway.meshgate.proc)  # fmt: skip


@pytest.fixture(params=[TransformersServe, LlamaServer, LlamaCppPython], ids=lambda server: server.kind)
def real(
    request: pytest.FixtureRequest,
    harness: Stack,
    redis_server: RedisServer,
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> RealGateway:
    server_type: type[RealLLMServer] = request.param
    reason = server_type.available()
    if reason is not None:
        pytest.skip(reason)
    server = harness.add(server_type(harness.workdir, model=MODEL)).start()
    port = free_port()
    policy = harness.workdir / "policy.yaml"
    policy.write_text(yaml.safe_dump(llm_policy(port, server), sort_keys=False))
    mg = meshgate_factory(policy, redis_url=redis_server.url)
    envoy = envoy_factory(envoy_bootstrap("llm", xds=mg.address("xds")))
    return RealGateway(Gateway(port, mg, envoy, server), server)


def ask(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def test_json_usage_is_charged_exactly_and_the_quota_refuses_what_would_exceed_it(real: RealGateway) -> None:
    client = real.gateway.client()
    answer = client.chat.completions.create(model=MODEL, messages=ask("Which is better, explicit or implicit?"),
                                            max_tokens=8, temperature=0)  # fmt: skip
    usage = answer.usage
    assert usage is not None
    # the tiny model never ends a sequence: the server generated exactly max_tokens, and counted them
    assert answer.choices[0].finish_reason == "length" and usage.completion_tokens == 8
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    left = LIMIT - usage.total_tokens
    real.gateway.charged_to(left)
    real.counted({"requests": 1, "prompt_tokens": usage.prompt_tokens, "completion_tokens": 8})

    # asked = the prompt's estimate + max_tokens > what is left: 429 before the server is called
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=ask("Now?"), max_tokens=left + 1)
    assert refused.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        list(client.chat.completions.create(model=MODEL, messages=ask("Now?"), max_tokens=left + 1,
                                            stream=True))  # fmt: skip
    assert real.gateway.remaining() == left  # a refused request is charged nothing
    real.counted({"requests": 1, "prompt_tokens": usage.prompt_tokens, "completion_tokens": 8})

    # what still fits is served, and charged what the server reported
    small = client.chat.completions.create(model=MODEL, messages=ask("Never?"), max_tokens=3, temperature=0)
    assert small.usage is not None and small.usage.completion_tokens == 3
    real.gateway.charged_to(left - small.usage.total_tokens)
    real.counted({"requests": 2, "prompt_tokens": usage.prompt_tokens + small.usage.prompt_tokens,
                  "completion_tokens": 8 + 3})  # fmt: skip
    assert real.gateway.remaining("globex") == LIMIT


def test_a_stream_is_charged_the_usage_of_its_last_chunk(real: RealGateway) -> None:
    """Asked with and without `stream_options.include_usage`: the gateway asks the server for usage in
    every stream (the merge of the include_usage filter reaches a real server as a rewritten, chunked
    body), charges what the last chunk reported, and passes that chunk only to a client that asked."""
    client = real.gateway.client()
    messages = ask("Special cases aren't special enough to break the rules.")
    reference = real.direct().chat.completions.create(model=MODEL, messages=messages, max_tokens=6,
                                                      temperature=0)  # fmt: skip
    assert reference.usage is not None and reference.usage.completion_tokens == 6
    text = reference.choices[0].message.content

    asked = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                                stream=True, stream_options={"include_usage": True}))  # fmt: skip
    not_asked = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                                    stream=True))  # fmt: skip
    for chunks in (asked, not_asked):  # greedy decoding: the same text as the JSON answer
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert all(c.usage is None for c in not_asked), "a usage chunk reached a client that did not ask"
    assert all(c.choices for c in not_asked)

    if not real.server.reports_stream_usage:
        # llama-cpp-python 0.3 sends no usage in a stream, asked or not: each stream is charged the
        # admission estimate (prompt estimate + max_tokens), counted as unreported, not as chargeback.
        # A JSON answer after the streams is charged what it used.
        assert all(c.usage is None for c in asked)
        estimate = estimate_tokens([messages[0]["content"]]) + 6
        real.gateway.charged_to(LIMIT - 2 * estimate)
        assert real.gateway.unreported() == 2
        after = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
        assert after.usage is not None and after.usage.total_tokens == reference.usage.total_tokens
        real.gateway.charged_to(LIMIT - 2 * estimate - after.usage.total_tokens)
        real.counted({"requests": 1, "prompt_tokens": after.usage.prompt_tokens, "completion_tokens": 6})
        return
    last = asked[-1]
    assert last.choices == [] and last.usage is not None
    assert [c.usage is not None for c in asked].count(True) == 1
    assert last.usage.prompt_tokens == reference.usage.prompt_tokens and last.usage.completion_tokens == 6
    real.gateway.charged_to(LIMIT - 2 * last.usage.total_tokens)
    real.counted({"requests": 2, "prompt_tokens": 2 * last.usage.prompt_tokens, "completion_tokens": 2 * 6})


def test_a_json_answer_with_a_charset_is_charged(
    harness: Stack, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy]
) -> None:
    """llama-server answers `content-type: application/json; charset=utf-8`; json_to_metadata's exact list
    refused it and the answer went uncharged. The stand-in, with that content-type, on every machine."""
    charset = "application/json; charset=utf-8"
    gateway = start_gateway(harness, meshgate_factory, envoy_factory,
                            backend_args=("--json-content-type", charset))  # fmt: skip
    raw = gateway.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=ask("Now is better than never."), max_tokens=5)  # fmt: skip
    assert raw.headers["content-type"] == charset
    answer = raw.parse()
    assert answer.usage is not None
    gateway.charged_to(LIMIT - answer.usage.total_tokens)
    assert gateway.envoy.stat("json_to_metadata.resp.mismatched_content_type") == 0
