"""Admission and charge of LLM token quotas through the whole chain (docs/llm.md, "Admission and the
overshoot bound"): a request is checked with what it asks for (the prompt's estimate + max_tokens, or
the model's context limit without max_tokens) and charged with what it used when its stream ends.

Requests in flight are checked against a counter that does not hold them yet, so N of them can end
above the limit, by at most (N - 1) x the largest ask. The chat stand-in holds every stream after its
first word (`--hold-streams`) until released: N streams are in flight at once by construction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.e2e.test_llm_usage import DOMAIN, MODEL, QUOTA, Gateway, start_gateway, words
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import http_request, wait_until
from tests.harness.stack import Stack

CHARS_PER_TOKEN = 4  # extauthz's prompt estimate: characters / 4, rounded up


def estimate(prompt: str) -> int:
    return -(-len(prompt) // CHARS_PER_TOKEN)


@pytest.mark.parametrize("admission", ["ratelimit", "extauthz"])  # (gateway.ratelimit.admission)
def test_n_streams_in_flight_overshoot_by_at_most_n_minus_one_asks(
    harness: Stack, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy], admission: str
) -> None:
    limit, n, max_tokens = 100, 4, 30
    gateway = start_gateway(harness, meshgate_factory, envoy_factory, limit=limit, backend_args=("--hold-streams",),
                            admission=admission)  # fmt: skip
    prompt = "Now is better than never."
    ask = estimate(prompt) + max_tokens  # each fits alone (ask <= limit); n of them do not
    assert ask <= limit < n * ask
    started = threading.Barrier(n + 1, timeout=20)

    def stream(i: int) -> int:
        chunks = gateway.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, stream=True,
            extra_body={"ignore_eos": True},  # vLLM's: exactly max_tokens words
        )  # fmt: skip
        text = ""
        for chunk in chunks:
            content = chunk.choices[0].delta.content if chunk.choices else None
            if content and not text:
                started.wait()  # admitted and streaming: its check is behind it
            text += content or ""
        return words(prompt) + words(text)

    with ThreadPoolExecutor(n) as pool:
        used = pool.map(stream, range(n))
        started.wait()  # all n checked against a counter holding none of them
        assert http_request(f"{gateway.backend.url}/_release", method="POST", data=b"")[0] == 200
        total = sum(used)
    assert total == n * (words(prompt) + max_tokens)
    # every stream was charged what it used: the counter ends above the limit, within the bound
    key = f"{DOMAIN}.quota_{QUOTA}.tenant_acme"
    wait_until(lambda: gateway.hits(key) == total, 10, what=f"{key} == {total}")
    assert limit < total <= limit + (n - 1) * ask
    assert gateway.remaining() == 0
    with pytest.raises(openai.RateLimitError):  # nothing more is admitted in this window
        gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Now?"}],
                                                 max_tokens=1)  # fmt: skip


def test_without_max_tokens_the_context_limit_is_checked(
    harness: Stack, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy]
) -> None:
    limit, context = 100, 64
    gateway: Gateway = start_gateway(harness, meshgate_factory, envoy_factory, limit=limit,
                                     context_limit_tokens=context)  # fmt: skip
    client = gateway.client()
    messages = [{"role": "user", "content": "Flat is better than nested."}]
    first = client.chat.completions.create(model=MODEL, messages=messages, extra_body={"ignore_eos": True})
    assert first.usage is not None
    left = limit - first.usage.total_tokens
    gateway.charged_to(left)
    assert left < context
    # no max_tokens: it could use the whole context, more than is left -> refused at admission
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=messages)
    with pytest.raises(openai.RateLimitError):
        list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    # with a max_tokens that fits, it is served and charged what it used
    small = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=left - 10)
    assert small.usage is not None
    gateway.charged_to(left - small.usage.total_tokens)
