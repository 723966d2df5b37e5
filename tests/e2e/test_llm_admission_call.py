"""The token admission decided in extauthz's Check (`gateway.ratelimit.admission: extauthz`) against the
rate limit filter's request-time check (the default), through two real Envoys fed by two `meshgate
serve`s with the same policy and the same chat stand-in: the same requests get the same answers (status,
the rate limit headers, the 429's body, Retry-After, x-envoy-ratelimited) and the same counters, and
the Check path makes one call to meshgate before the model instead of two (docs/llm.md, "Admission in
the Check")."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.test_llm_usage import MODEL, QUOTA, REQUESTS_QUOTA, Gateway, start_gateway
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import wait_until
from tests.harness.stack import Stack
from tests.unit.test_extauthz_support import mint

LIMIT = 60
REQUESTS = 4
COMPARED = ("x-ratelimit-limit", "x-ratelimit-remaining", "retry-after", "x-envoy-ratelimited", "content-type")


def _ask(gateway: Gateway, max_tokens: int, *, stream: bool = False) -> tuple[int, dict[str, str], Any]:
    token = mint(tenant="acme", sub="acme-user", roles=["invoker"])
    body = {"model": MODEL, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "Simple is better than complex."}]}  # fmt: skip
    with httpx.Client(timeout=20, trust_env=False) as client:
        response = client.post(f"http://127.0.0.1:{gateway.port}/v1/chat/completions", json=body,
                               headers={"authorization": f"Bearer {token}"})  # fmt: skip
    headers = {k: response.headers[k] for k in COMPARED if k in response.headers}
    if response.status_code != 200:
        return response.status_code, headers, response.json() if response.content else None
    return response.status_code, headers, None


def _clockless(answer: tuple[int, dict[str, str], Any]) -> tuple[int, dict[str, str], str]:
    """`answer` without the seconds to the window's reset (its Retry-After, and in its body)."""
    status, headers, body = answer
    text = re.sub(r"retry after \d+ s", "retry after N s", json.dumps(body, sort_keys=True))
    return status, {k: v for k, v in headers.items() if k != "retry-after"}, text


def _retry_after(answer: tuple[int, dict[str, str], Any]) -> int:
    return int(answer[1].get("retry-after", "-1"))


def _calls(gateway: Gateway) -> float:
    """ShouldRateLimit calls the gateway made (request-time checks and stream-end charges): Envoy's
    count (the token admission in the Check is none)."""
    return gateway.envoy.stat("cluster.meshgate|ratelimit.upstream_rq_total")


def test_admission_in_the_check_answers_as_the_rate_limit_filter(
    harness: Stack, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy]
) -> None:
    gateways = {
        admission: start_gateway(harness, meshgate_factory, envoy_factory, limit=LIMIT, transport="http",
                                 admission=admission, requests_limit=REQUESTS)
        for admission in ("ratelimit", "extauthz")
    }  # fmt: skip
    seen = []
    # admitted while the token quota holds the ask, then refused (JSON and stream), then the requests
    # quota (4 a day; a refused request counts for none) refuses the 5th it would admit
    asks = [(10, False), (10, True), (10, False), (40, False), (40, True), (2, False), (2, True), (2, False)]
    for max_tokens, stream in asks:
        before = {name: _calls(g) for name, g in gateways.items()}
        answers = {name: _ask(g, max_tokens, stream=stream) for name, g in gateways.items()}
        reference, checked = answers["ratelimit"], answers["extauthz"]
        status, headers, body = reference
        assert checked[0] == status, (max_tokens, stream, answers)
        # (asked one after the other: a second may turn between them, and the time to the window's
        # reset with it)
        assert _clockless(checked) == _clockless(reference), (max_tokens, stream, answers)
        assert abs(_retry_after(checked) - _retry_after(reference)) <= 1, (max_tokens, stream, answers)
        if status == 200:  # charged at stream end by both: the counters stay equal
            for name, g in gateways.items():
                wait_until(lambda g=g, n=before[name]: _calls(g) >= n + (2 if g is gateways["ratelimit"] else 1),
                           10, what=f"{name}: the stream-end charge")  # fmt: skip
            calls = {name: _calls(g) - before[name] for name, g in gateways.items()}
            assert calls == {"ratelimit": 2, "extauthz": 1}  # check + charge vs the charge alone
            assert gateways["ratelimit"].remaining() == gateways["extauthz"].remaining()
        seen.append(status)
    assert seen == [200, 200, 200, 429, 429, 200, 429, 429], seen  # both answers were compared
    for name, gateway in gateways.items():  # both refuse in OpenAI's shape, naming the quota
        status, headers, body = _ask(gateway, 40)
        assert status == 429, name
        assert body["error"]["code"] == "rate_limit_exceeded", name
        assert body["error"]["quota"] in (QUOTA, f"{REQUESTS_QUOTA}", f"{REQUESTS_QUOTA},{QUOTA}"), name
        assert headers["x-envoy-ratelimited"] == "true" and int(headers["retry-after"]) > 0, name
