"""OpenAI's SDK, unchanged, through the real gateway: Envoy 1.40 configured by `meshgate serve` over ADS,
in front of the chat stand-in of examples/quickstart_models.py.

- `OpenAI(api_key=KEY)` with a meshgate API key, and with a JWT (both sent as `Authorization: Bearer`);
- errors in OpenAI's shape, read by the SDK into its exceptions (`code`, `type`, `body`), the 429 of a
  token quota included, with `Retry-After` and the quota's name;
- `client.models.list()` / `retrieve()`: the OpenAI models the caller may use;
- `versions[].served_name`: the body's `model` rewritten to the name each version's backend serves;
- /v1/embeddings, /v1/responses and /openai/v1/ routed by the body's model, their usage charged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import openai
import pytest

from meshgate.xds.bootstrap import envoy_bootstrap
from tests.e2e.test_llm_usage import SETUPS, ChatStandIn, Gateway
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import free_port
from tests.harness.stack import Stack
from tests.unit.test_extauthz_support import AUDIENCE, ISSUER, mint, public_jwks

MODEL = "zen-chat"
QUOTA = "tokens-per-day"
LIMIT = 400
KEY = "sk-acme-0123456789abcdef"  # an OpenAI-looking key: no dots
KEY_GLOBEX = "sk-globex-0123456789abcdef"


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def policy(
    port: int, chats: dict[str, tuple[tuple[str, ChatStandIn, str | None], ...]], transport: str = "grpc",
    admission: str = "ratelimit",
) -> dict[str, Any]:  # fmt: skip
    """Tenants acme (a token quota) and globex; API keys and JWTs; `chats`: OpenAI model name ->
    (version, backend, served_name) per version; a private OpenAI model of globex and a KServe model
    (neither listed for acme); extauthz called over `transport`."""
    models: list[dict[str, Any]] = []
    for name, versions in chats.items():
        weight = 100 // len(versions)
        models.append({"name": name, "protocol": "openai", "versions": [
            {"name": version, "weight": weight, "endpoints": [f"{backend.host}:{backend.port}"],
             **({"served_name": served} if served else {})}
            for version, backend, served in versions]})  # fmt: skip
    unused = [{"name": "v1", "endpoints": ["127.0.0.1:9"]}]
    models += [
        {"name": "globex-chat", "protocol": "openai", "visibility": "private", "owner": "globex",
         "health_check": {"enabled": False}, "versions": unused},
        {"name": "iris", "health_check": {"enabled": False}, "versions": unused},
    ]  # fmt: skip
    return {
        "version": 1,
        "gateway": {"port": port, "address": "127.0.0.1", "ext_authz": {"transport": transport},
                    "ratelimit": {"admission": admission}},
        "issuers": [{
            "name": "test", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["RS256"],
            "claims": {"tenant": "tenant", "user": "sub", "roles": "roles"}, "jwks": public_jwks(),
        }],
        "api_keys": [
            {"id": "acme-sdk", "tenant": "acme", "roles": ["invoker"], "sha256": sha256(KEY)},
            {"id": "globex-sdk", "tenant": "globex", "roles": ["invoker"], "sha256": sha256(KEY_GLOBEX)},
        ],
        "tenants": [{"name": "acme", "quotas": [QUOTA]}, {"name": "globex"}],
        "roles": [{"name": "invoker", "models": ["*"]}],
        "models": models,
        "quotas": [{"name": QUOTA, "per": "tenant", "unit": "tokens", "limit": LIMIT, "window": "day",
                    "models": [MODEL]}],
    }  # fmt: skip


def gateway_for(
    harness: Stack,
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
    chats: dict[str, tuple[tuple[str, ChatStandIn, str | None], ...]],
    transport: str = "grpc",
    admission: str = "ratelimit",
) -> Gateway:
    port = free_port()
    mg = meshgate_factory(policy(port, chats, transport, admission))
    envoy = envoy_factory(envoy_bootstrap("llm-openai", xds=mg.address("xds")))
    first = next(iter(chats.values()))[0][1]
    return Gateway(port, mg, envoy, first)


def client(gateway: Gateway, api_key: str, *, prefix: str = "/v1", **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}{prefix}", api_key=api_key,
                         max_retries=0, timeout=20, **kwargs)  # fmt: skip


@pytest.fixture(params=list(SETUPS))
def gateway(
    request: pytest.FixtureRequest,
    harness: Stack,
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> Gateway:
    """The gateway, extauthz over gRPC and over HTTP, and over HTTP deciding the token admission itself
    (test_llm_usage.SETUPS)."""
    backend = harness.add(ChatStandIn(harness.workdir)).start()
    chats = {MODEL: (("v1", backend, None),)}
    transport, admission = SETUPS[request.param]
    return gateway_for(harness, meshgate_factory, envoy_factory, chats, transport=transport, admission=admission)


def ask(c: openai.OpenAI, model: str = MODEL, max_tokens: int = 4) -> Any:
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Now is better."}],
                                     max_tokens=max_tokens)  # fmt: skip


def test_the_sdk_with_an_api_key_or_a_jwt(gateway: Gateway) -> None:
    for api_key in (KEY, mint(tenant="acme", sub="alice", roles=["invoker"])):
        answer = ask(client(gateway, api_key))
        assert answer.choices[0].message.content and answer.usage is not None

    with pytest.raises(openai.AuthenticationError) as bad_key:
        ask(client(gateway, "sk-not-a-key"))
    assert (bad_key.value.status_code, bad_key.value.code, bad_key.value.type) == (
        401, "invalid_api_key", "authentication_error")  # fmt: skip
    assert bad_key.value.body == {"message": "API key is not valid", "type": "authentication_error",
                                  "param": None, "code": "invalid_api_key"}  # fmt: skip
    assert "sk-not-a-key" not in str(bad_key.value)

    # a dummy bearer (the SDK always sends one) next to a real key in x-api-key: still ambiguous
    for bearer in ("dummy", mint(tenant="acme", sub="alice", roles=["invoker"])):
        with pytest.raises(openai.AuthenticationError) as ambiguous:
            ask(client(gateway, bearer, default_headers={"x-api-key": KEY}))
        assert ambiguous.value.code == "ambiguous_credentials"


def test_errors_are_in_openai_shape(gateway: Gateway) -> None:
    acme = client(gateway, KEY)
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        ask(acme, model="globex-chat")  # someone else's private model
    assert (forbidden.value.code, forbidden.value.type) == ("model_forbidden", "permission_error")
    with pytest.raises(openai.BadRequestError) as unresolved:
        acme.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}])
    assert unresolved.value.code == "model_unresolved"

    # a token quota's 429 comes from Envoy's rate limit filter: OpenAI's shape, the quota, Retry-After
    first = ask(acme)
    assert first.usage is not None
    left = LIMIT - first.usage.total_tokens
    gateway.charged_to(left)
    with pytest.raises(openai.RateLimitError) as limited:
        ask(acme, max_tokens=left + 1)
    error = limited.value
    assert (error.status_code, error.code, error.type) == (429, "rate_limit_exceeded", "rate_limit_error")
    assert isinstance(error.body, dict) and error.body["quota"] == QUOTA
    headers = error.response.headers
    assert headers["retry-after"] == headers["x-ratelimit-reset"] and int(headers["retry-after"]) > 0
    assert QUOTA in error.body["message"] and f"retry after {headers['retry-after']} s" in error.body["message"]
    assert gateway.remaining() == left  # refused: charged nothing


def test_the_429_names_the_quota_that_refused_not_every_quota_counting_the_request(
    harness: Stack, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy]
) -> None:
    """Two quotas count every request of acme (requests per day, then tokens per day): the 429 names
    the one over its limit (meshgate ratelimit's answer says which), in the body and RateLimit-Policy."""
    backend = harness.add(ChatStandIn(harness.workdir)).start()
    port = free_port()
    two = policy(port, {MODEL: (("v1", backend, None),)})
    two["gateway"]["ratelimit"] = {"response_headers": "x-ratelimit"}
    two["quotas"].insert(0, {"name": "requests-per-day", "per": "tenant", "limit": 2, "window": "day"})
    two["tenants"][0]["quotas"] = ["requests-per-day", QUOTA]
    mg = meshgate_factory(two)
    gw = Gateway(port, mg, envoy_factory(envoy_bootstrap("llm-429", xds=mg.address("xds"))), backend)
    acme = client(gw, KEY)

    first = ask(acme)  # requests 1 of 2
    assert first.usage is not None
    left = LIMIT - first.usage.total_tokens
    gw.charged_to(left)
    refusals: dict[str, openai.RateLimitError] = {}
    with pytest.raises(openai.RateLimitError) as by_tokens:  # the second quota refuses, the first admits
        ask(acme, max_tokens=left + 1)
    refusals[QUOTA] = by_tokens.value
    ask(acme)  # a refused request added nothing: requests 2 of 2
    with pytest.raises(openai.RateLimitError) as by_requests:  # now the first refuses, the second admits
        ask(acme)
    refusals["requests-per-day"] = by_requests.value
    for quota, error in refusals.items():
        assert isinstance(error.body, dict) and error.body["quota"] == quota
        assert f"Rate limit reached for quota {quota};" in error.body["message"]
        headers = error.response.headers
        assert headers["ratelimit-policy"].startswith(f'"{quota}";')
        assert headers["retry-after"] == headers["x-ratelimit-reset"] and int(headers["retry-after"]) > 0


def test_models_list_is_what_the_caller_may_use(gateway: Gateway) -> None:
    for prefix in ("/v1", "/openai/v1"):
        acme = client(gateway, KEY, prefix=prefix)
        assert [m.id for m in acme.models.list()] == [MODEL]  # not globex's private model, not KServe's
        assert acme.models.retrieve(MODEL).id == MODEL
        with pytest.raises(openai.NotFoundError) as hidden:
            acme.models.retrieve("globex-chat")
        assert hidden.value.code == "model_not_found"
        globex = client(gateway, KEY_GLOBEX, prefix=prefix)
        assert sorted(m.id for m in globex.models.list()) == ["globex-chat", MODEL]
    with pytest.raises(openai.AuthenticationError):
        client(gateway, "sk-not-a-key").models.list()


def test_served_name_is_what_each_version_backend_gets(
    harness: Stack, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy]
) -> None:
    """Each backend knows only its own name (the stand-in answers 404 to any other): the gateway
    rewrites the body's model per version, weighted cluster by weighted cluster."""
    served = {"v1": "org/Zen-Chat-7B", "v2": "org/Zen-Chat-8B"}
    backends = {v: harness.add(ChatStandIn(harness.workdir, model=name)).start() for v, name in served.items()}
    solo = harness.add(ChatStandIn(harness.workdir, model="org/Solo-1B")).start()
    gw = gateway_for(harness, meshgate_factory, envoy_factory,
                     {MODEL: tuple((v, backends[v], served[v]) for v in served),
                      "solo-chat": (("v1", solo, "org/Solo-1B"),)})  # fmt: skip
    acme = client(gw, KEY)
    assert ask(acme, model="solo-chat", max_tokens=1).model == "org/Solo-1B"  # one version: the route's name
    seen: set[str] = set()
    for _ in range(60):  # 50 / 50: both versions answer within 60 requests but with odds of 2^-59
        seen.add(ask(acme, max_tokens=1).model)
        if seen == set(served.values()):
            break
    assert seen == set(served.values())
    streamed = list(acme.chat.completions.create(model=MODEL, max_tokens=2, stream=True,
                                                 messages=[{"role": "user", "content": "Flat?"}]))  # fmt: skip
    assert streamed and streamed[0].model in served.values()


def test_embeddings_responses_and_the_kserve_prefix_are_routed_and_charged(gateway: Gateway) -> None:
    """Each OpenAI endpoint names its model in the body and reports usage in its own shape (embeddings:
    prompt_tokens; Responses: input/output_tokens, in a stream inside `response.completed`): all charged
    to the token quota and counted per tenant and model."""
    acme = client(gateway, KEY)
    left, prompts, completions = LIMIT, 0, 0

    embedded = acme.embeddings.create(model=MODEL, input=["Beautiful is better", "than ugly."])
    assert len(embedded.data) == 2 and embedded.usage.total_tokens == 5
    left, prompts = left - 5, prompts + 5
    gateway.charged_to(left)

    answer = acme.responses.create(model=MODEL, input="Simple is better than complex.", max_output_tokens=4)
    assert answer.output_text and answer.usage is not None
    assert answer.usage.total_tokens == answer.usage.input_tokens + answer.usage.output_tokens
    left -= answer.usage.total_tokens
    prompts, completions = prompts + answer.usage.input_tokens, completions + answer.usage.output_tokens
    gateway.charged_to(left)

    # a Responses stream: the gateway adds no stream_options (the stand-in refuses them, as the Responses
    # API has no include_usage); its usage comes in the last event
    events = list(acme.responses.create(model=MODEL, input="Flat is better", max_output_tokens=3, stream=True))
    done = events[-1]
    assert done.type == "response.completed" and done.response.usage is not None
    left -= done.response.usage.total_tokens
    prompts += done.response.usage.input_tokens
    completions += done.response.usage.output_tokens
    gateway.charged_to(left)

    kserve = client(gateway, KEY, prefix="/openai/v1")  # KServe's Hugging Face runtime's path
    chat = ask(kserve)
    assert chat.usage is not None
    left -= chat.usage.total_tokens
    prompts, completions = prompts + chat.usage.prompt_tokens, completions + chat.usage.completion_tokens
    gateway.charged_to(left)
    for kind, value in (("prompt_tokens", prompts), ("completion_tokens", completions), ("requests", 4)):
        assert gateway.hits(f"meshgate.meshgate.usage_{kind}.tenant_acme.model_{MODEL}") == value, kind
