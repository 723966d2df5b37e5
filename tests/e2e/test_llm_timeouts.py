"""Stream-friendly route timeouts (policy `models[].idle_timeout`, docs/llm.md): a stream that stalls is
ended by the idle timeout between chunks, long before the route's total `timeout`, which a long but
steady stream needs. The chat stand-in holds its stream after the first word (`--hold-streams`) and is
never released: only a timer can end it, and Envoy's stats say which one did."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.e2e.test_llm_usage import MODEL, start_gateway
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.stack import Stack


def test_a_stalled_stream_ends_at_the_idle_timeout_not_the_total_one(
    harness: Stack, meshgate_factory: Callable[..., Meshgate], envoy_factory: Callable[..., Envoy]
) -> None:
    gateway = start_gateway(harness, meshgate_factory, envoy_factory, backend_args=("--hold-streams",),
                            timeout="10m", idle_timeout="500ms")  # fmt: skip
    routes = json.dumps(gateway.envoy.config_dump(resource="dynamic_route_configs"))
    assert '"idle_timeout": "0.500s"' in routes and '"timeout": "600s"' in routes  # arrived over RDS
    client = gateway.client(timeout=30)
    text = ""
    with pytest.raises((openai.APIError, httpx.HTTPError)):  # the stream is cut: no [DONE]
        for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Now?"}],
                                                    max_tokens=5, stream=True):  # fmt: skip
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text  # the first word came through before the stall
    assert gateway.envoy.stat("http.gateway.downstream_rq_idle_timeout") == 1
    assert gateway.envoy.stat("cluster.model|zen-chat|v1.upstream_rq_timeout") == 0
