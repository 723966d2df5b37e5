"""LLM token quotas with the usage a real OpenAI-compatible server reports: in the JSON body, or in the
last SSE chunk of a stream, never in a header (docs/llm.md).

The whole chain, as `meshgate serve` configures it over ADS: Envoy 1.40 -> ext_authz (a JWT, the model
from the body) -> ratelimit (check the asked tokens) -> the LLM usage filters -> the chat stand-in of
examples/quickstart_models.py (vLLM's shapes: usage in the last chunk only with
`stream_options.include_usage`). The client is the official `openai` SDK.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
import yaml
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from meshgate.extauthz.prompt import estimate_tokens
from meshgate.xds.bootstrap import envoy_bootstrap
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import Proc, free_port, http_get, wait_for_http, wait_until
from tests.harness.stack import Stack
from tests.unit.test_extauthz_support import AUDIENCE, ISSUER, mint, public_jwks

ROOT = Path(__file__).resolve().parents[2]
MODEL = "zen-chat"
QUOTA = "tokens-per-day"
REQUESTS_QUOTA = "requests-per-day"
LIMIT = 400
DOMAIN = "meshgate"


class ChatStandIn:
    """`python examples/quickstart_models.py chat --model NAME --port P`, stopped by PID."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, *args: str, model: str = MODEL) -> None:
        self.port = free_port()
        argv = [sys.executable, ROOT / "examples" / "quickstart_models.py", "chat", "--model", model,
                "--port", self.port, *args]  # fmt: skip
        self.proc = Proc(f"chat-{model.replace('/', '_')}", argv, log_dir=workdir)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ChatStandIn:
        self.proc.start()
        wait_for_http(f"{self.url}/health", 20, proc=self.proc)
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        return self.proc.stop(timeout)


def llm_policy(
    gateway_port: int, backend: ChatStandIn, *, limit: int = LIMIT, transport: str = "grpc",
    admission: str = "ratelimit", requests_limit: int | None = None, **model: Any,
) -> dict[str, Any]:  # fmt: skip
    """acme and globex, each with a per-tenant token quota (and with `requests_limit`, a per-user quota of
    that many requests a day, REQUESTS_QUOTA); one OpenAI model; JWTs from an inline JWKS; extauthz
    called over `transport` (gateway.ext_authz.transport), admission by `admission`
    (gateway.ratelimit.admission)."""
    quotas = [{"name": QUOTA, "per": "tenant", "unit": "tokens", "limit": limit, "window": "day"}]
    if requests_limit is not None:
        quotas.append({"name": REQUESTS_QUOTA, "per": ["tenant", "user"], "limit": requests_limit,
                       "window": "day"})  # fmt: skip
    names = [q["name"] for q in quotas]
    return {
        "version": 1,
        "gateway": {"port": gateway_port, "ext_authz": {"transport": transport},
                    "ratelimit": {"admission": admission}},
        "issuers": [{
            "name": "test", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["RS256"],
            "claims": {"tenant": "tenant", "user": "sub", "roles": "roles"}, "jwks": public_jwks(),
        }],
        "tenants": [{"name": "acme", "quotas": names}, {"name": "globex", "quotas": names}],
        "roles": [{"name": "invoker", "models": ["*"]}],
        "models": [{"name": MODEL, "protocol": "openai", "versions": [
            {"name": "v1", "endpoints": [f"{backend.host}:{backend.port}"]}], **model}],
        "quotas": quotas,
    }  # fmt: skip


@dataclass
class Gateway:
    port: int
    meshgate: Meshgate
    envoy: Envoy
    backend: ChatStandIn

    def client(self, tenant: str = "acme", **kwargs: Any) -> openai.OpenAI:
        """The OpenAI SDK with a tenant's JWT as its API key (sent as `Authorization: Bearer`)."""
        token = mint(tenant=tenant, sub=f"{tenant}-user", roles=["invoker"])
        kwargs.setdefault("max_retries", 0)  # a 429 must reach the test, not be retried
        kwargs.setdefault("timeout", 20)
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=token, **kwargs)

    def remaining(self, tenant: str = "acme") -> int:
        """What the tenant's token quota has left, asked with hits_addend 0 (checks, adds nothing)."""
        request = rls_pb2.RateLimitRequest(domain=DOMAIN)
        descriptor = request.descriptors.add()
        for key, value in (("quota", QUOTA), ("tenant", tenant)):
            descriptor.entries.add(key=key, value=value)
        descriptor.hits_addend.value = 0
        with grpc.insecure_channel(self.meshgate.address("ratelimit")) as channel:
            reply = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request, timeout=2.0)
        return int(reply.statuses[0].limit_remaining)

    def charged_to(self, left: int, tenant: str = "acme") -> None:
        """Wait for the stream-end charge (Envoy sends it after the client got the last byte)."""
        wait_until(lambda: self.remaining(tenant) == left, 10, what=f"{tenant} remaining == {left}",
                   proc=self.meshgate.proc)  # fmt: skip

    def unreported(self, tenant: str = "acme") -> float:
        """meshgate_ratelimit_usage_unreported_total of the tenant's token quota (a per-tenant quota:
        model `unknown`); 0 when absent."""
        status, body = http_get(self.meshgate.metrics_url)
        assert status == 200
        labels = {"domain": DOMAIN, "quota": QUOTA, "tenant": tenant, "model": "unknown"}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == "meshgate_ratelimit_usage_unreported_total" and sample.labels == labels:
                    return sample.value
        return 0.0

    def hits(self, key: str) -> float:
        """meshgate_ratelimit_total_hits_total for one key of the policy's domain (0 when absent)."""
        status, body = http_get(self.meshgate.metrics_url)
        assert status == 200
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == "meshgate_ratelimit_total_hits_total" and sample.labels.get("key") == key:
                    return sample.value
        return 0.0


def start_gateway(
    harness: Stack,
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
    *,
    limit: int = LIMIT,
    backend_args: tuple[str, ...] = (),
    transport: str = "grpc",
    admission: str = "ratelimit",
    requests_limit: int | None = None,
    **model: Any,
) -> Gateway:
    """The chat stand-in (with `backend_args`), meshgate with `llm_policy` (`model`: more fields of the
    model) and Envoy fed by its ADS."""
    backend = harness.add(ChatStandIn(harness.workdir, *backend_args)).start()
    port = free_port()
    policy = harness.workdir / f"policy-{port}.yaml"  # (one file per gateway: meshgate watches it)
    policy.write_text(yaml.safe_dump(llm_policy(port, backend, limit=limit, transport=transport, admission=admission,
                                     requests_limit=requests_limit, **model), sort_keys=False))
    mg = meshgate_factory(policy)
    envoy = envoy_factory(envoy_bootstrap("llm", xds=mg.address("xds")))
    return Gateway(port, mg, envoy, backend)


SETUPS = {"grpc": ("grpc", "ratelimit"), "http": ("http", "ratelimit"), "http+admission": ("http", "extauthz")}
"""transport, admission: extauthz over gRPC or HTTP (the tokens asked reach the rate limit filter
through each transport's metadata: contract.asked_tokens), or over HTTP deciding the admission itself."""


@pytest.fixture(params=list(SETUPS))
def gateway(
    request: pytest.FixtureRequest,
    harness: Stack,
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> Iterator[Gateway]:
    transport, admission = SETUPS[request.param]
    yield start_gateway(harness, meshgate_factory, envoy_factory, transport=transport, admission=admission)


def words(text: str) -> int:
    """The stand-in counts tokens as whitespace-separated words."""
    return len(text.split())


def test_usage_from_the_json_body_and_the_last_sse_chunk_is_charged_exactly(gateway: Gateway) -> None:
    client = gateway.client()
    left = LIMIT

    # JSON: usage only in the body
    prompt = "Which is better, explicit or implicit?"
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=6)  # fmt: skip
    assert answer.usage is not None
    used = answer.usage.total_tokens
    assert used == words(prompt) + words(answer.choices[0].message.content or "")
    left -= used
    gateway.charged_to(left)

    # SSE, the client asked for usage: only the last chunk carries it
    prompt = "Is flat better than nested?"
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=7, stream=True,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    assert [c.usage is not None for c in chunks].index(True) == len(chunks) - 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == words(prompt) + words(text)
    left -= chunks[-1].usage.total_tokens
    gateway.charged_to(left)

    # SSE, the client did not ask: the gateway asked the backend for it, and charges it all the same
    prompt = "Should errors pass silently?"
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=9, stream=True,
    ))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    left -= words(prompt) + words(text)
    gateway.charged_to(left)
    assert gateway.remaining("globex") == LIMIT  # another tenant's quota is untouched


def test_a_request_that_would_exceed_the_token_quota_is_refused(gateway: Gateway) -> None:
    client = gateway.client()
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Now is better."}],
                                            max_tokens=8)  # fmt: skip
    assert answer.usage is not None
    left = LIMIT - answer.usage.total_tokens
    gateway.charged_to(left)

    # asked = the prompt's estimate + max_tokens: more than is left -> 429 before the backend is called
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Now?"}],
                                       max_tokens=left + 1)  # fmt: skip
    with pytest.raises(openai.RateLimitError):
        list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Now?"}],
                                            max_tokens=left + 1, stream=True))  # fmt: skip
    assert gateway.remaining() == left  # a refused request is charged nothing
    # what still fits is served
    small = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Never?"}],
                                           max_tokens=4)  # fmt: skip
    assert small.usage is not None
    gateway.charged_to(left - small.usage.total_tokens)


def test_chargeback_counters_per_tenant_and_model(gateway: Gateway) -> None:
    """Requests, prompt and completion tokens per (tenant, model); total hits of a token quota count the
    tokens charged (used), not those only checked (asked) at admission."""
    prompts = {"acme": ["Beautiful is better than ugly.", "Simple is better than complex."],
               "globex": ["Readability counts."]}  # fmt: skip
    expected: dict[str, dict[str, int]] = {}
    for tenant, texts in prompts.items():
        client = gateway.client(tenant)
        counts = expected[tenant] = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for i, prompt in enumerate(texts):
            messages = [{"role": "user", "content": prompt}]
            if i % 2:
                chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5,
                                                             stream=True))  # fmt: skip
                completion = words("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
            else:
                answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)
                completion = words(answer.choices[0].message.content or "")
            counts["requests"] += 1
            counts["prompt_tokens"] += words(prompt)
            counts["completion_tokens"] += completion
    for tenant, counts in expected.items():
        gateway.charged_to(LIMIT - counts["prompt_tokens"] - counts["completion_tokens"], tenant)
        for kind, value in counts.items():
            key = f"{DOMAIN}.meshgate.usage_{kind}.tenant_{tenant}.model_{MODEL}"
            wait_until(lambda key=key, value=value: gateway.hits(key) == value, 10, what=f"{key} == {value}")
    used = sum(c["prompt_tokens"] + c["completion_tokens"] for c in expected.values())
    # the token quota's counters: only what was charged at stream end (the check phase adds nothing)
    quota_hits = sum(gateway.hits(f"{DOMAIN}.quota_{QUOTA}.tenant_{t}") for t in expected)
    assert quota_hits == used


LARGE_PROMPT = "Special cases aren't special enough."


def large_answer(gateway: Gateway) -> Any:
    """A JSON answer of ~1.2 MB (700 choices of 256 words) and its usage, through the gateway."""
    messages = [{"role": "user", "content": LARGE_PROMPT}]
    raw = gateway.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=256, n=700, extra_body={"ignore_eos": True})  # fmt: skip
    assert int(raw.headers["content-length"]) >= 1_000_000
    big = raw.parse()
    assert len(big.choices) == 700 and big.usage is not None
    return big


def test_a_json_answer_above_1_mb_is_charged(
    harness: Stack, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy]
) -> None:
    """json_to_metadata holds a JSON answer whole: past Envoy's 1 MiB default buffer it was a 500, then
    passed unread and uncharged. The model's routes raise the stream's buffer limit to its
    max_json_answer_bytes (default 8 MiB): a 1.2 MB answer is read and charged exactly."""
    limit = 1_000_000
    gateway = start_gateway(harness, meshgate_factory, envoy_factory, limit=limit)
    big = large_answer(gateway)
    assert big.usage.total_tokens > 700 * 256
    gateway.charged_to(limit - big.usage.total_tokens)


def test_a_json_answer_above_the_models_max_passes_through_charged_the_estimate(
    harness: Stack, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy]
) -> None:
    """An answer of max_json_answer_bytes or more (its content-length) is passed through unread, not a
    500, and is charged the admission estimate (its usage unread: prompt estimate + max_tokens, once
    for its 700 choices); a small one is charged what it used."""
    gateway = start_gateway(harness, meshgate_factory, envoy_factory, max_json_answer_bytes=1_000_000)
    big = large_answer(gateway)
    assert big.usage.total_tokens > LIMIT
    left = LIMIT - (estimate_tokens([LARGE_PROMPT]) + 256)
    gateway.charged_to(left)
    assert gateway.unreported() == 1
    small = gateway.client().chat.completions.create(model=MODEL, max_tokens=4,
                                                     messages=[{"role": "user", "content": "Now?"}])  # fmt: skip
    assert small.usage is not None
    gateway.charged_to(left - small.usage.total_tokens)
    assert gateway.unreported() == 1  # a reported usage is not an estimate charge


def test_a_stream_without_usage_is_charged_the_estimate(
    harness: Stack, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy]
) -> None:
    """A backend that never reports usage in a stream (`--no-stream-usage`: as llama-cpp-python's
    server, which ignores stream_options) is charged the admission estimate at stream end, and a later
    request that no longer fits is refused. Its JSON answers still report usage: charged exactly."""
    gateway = start_gateway(harness, meshgate_factory, envoy_factory, backend_args=("--no-stream-usage",))
    client = gateway.client()
    prompt = "Errors should never pass silently."
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=150, stream=True,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    assert chunks and all(c.usage is None for c in chunks)  # the backend reported none
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert 0 < words(text) < 150  # used less than it asked for
    left = LIMIT - (estimate_tokens([prompt]) + 150)
    gateway.charged_to(left)
    assert gateway.unreported() == 1
    # a JSON answer reports its usage: charged what it used, no estimate
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Now."}],
                                            max_tokens=3)  # fmt: skip
    assert answer.usage is not None
    left -= answer.usage.total_tokens
    gateway.charged_to(left)
    # another unreported stream takes the estimate again
    prompt = "Unless explicitly silenced."
    list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                        max_tokens=100, stream=True))  # fmt: skip
    left -= estimate_tokens([prompt]) + 100
    gateway.charged_to(left)
    assert gateway.unreported() == 2
    # an error answer reports no usage either: the estimate (the stand-in, as vLLM, refuses
    # stream_options without stream with a 400)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Now?"}],
                                       max_tokens=10, stream_options={"include_usage": True})  # fmt: skip
    left -= estimate_tokens(["Now?"]) + 10
    gateway.charged_to(left)
    assert gateway.unreported() == 3
    # what is left no longer fits a request asking for more: refused before the backend
    with pytest.raises(openai.RateLimitError):
        list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Now?"}],
                                            max_tokens=left, stream=True))  # fmt: skip
    assert gateway.remaining() == left  # the refused request is charged nothing
    assert gateway.unreported() == 3


@pytest.mark.parametrize("backend_args", [(), ("--split-events",)], ids=["whole-events", "split-events"])
def test_the_usage_chunk_reaches_only_a_client_that_asked_for_it(
    harness: Stack,
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
    backend_args: tuple[str, ...],
) -> None:
    """The gateway asks the backend for usage in every stream; a client that did not ask does not get
    the usage chunk (dropped by the gateway's Lua filter after sse_to_metadata read it), and is charged
    exactly what the backend reported; a client that asked still gets it. With `--split-events` the
    backend writes every event in two parts (an event split across body chunks)."""
    gateway = start_gateway(harness, meshgate_factory, envoy_factory, backend_args=backend_args)
    client = gateway.client()
    direct = openai.OpenAI(base_url=f"{gateway.backend.url}/v1", api_key="unused", max_retries=0, timeout=20)
    left = LIMIT
    prompt = "Special cases aren't special enough to break the rules."
    messages = [{"role": "user", "content": prompt}]

    def expected(max_tokens: int) -> tuple[str, int]:
        """The text and usage the backend reports for the prompt, asked straight (deterministic)."""
        chunks = list(direct.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                     stream=True, stream_options={"include_usage": True}))  # fmt: skip
        assert chunks[-1].usage is not None and chunks[-1].choices == []
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].usage.total_tokens

    for options in (None, {"include_usage": False}):
        text, used = expected(11)
        kwargs: dict[str, Any] = {"stream_options": options} if options is not None else {}
        chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=11, stream=True,
                                                     **kwargs))  # fmt: skip
        assert all(c.choices for c in chunks), "a chunk with empty choices reached the client"
        assert all(c.usage is None for c in chunks), "a usage chunk reached the client"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
        assert chunks[-1].choices[0].finish_reason is not None
        left -= used
        gateway.charged_to(left)

    # the client asked: it gets the usage chunk, last
    text, used = expected(5)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == used
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    left -= used
    gateway.charged_to(left)
