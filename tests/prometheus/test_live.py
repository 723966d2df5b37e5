"""The chart's rules and dashboard in a real Prometheus, scraping a real `meshgate serve` and its gateway.

Prometheus (Debian's package) scrapes meshgate's /metrics as job `meshgate` (the job the rendered
rules select) and the gateway Envoy's /stats/prometheus as job `gateway`, every second, and loads the
chart's rendered rule file. Traffic goes through Envoy to the chat stand-in: allowed requests, a tenant
without the role, an unknown key, and requests over a quota. Then every query of the dashboard's
"Tenants and models" row (its variables set as Grafana would) returns series for the tenants and
models that traffic had, and every rule evaluates without error.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from meshgate.xds.bootstrap import envoy_bootstrap
from tests.chart._chart import CHART, iter_dashboard_exprs
from tests.e2e.test_llm_usage import ChatStandIn
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import free_port, wait_until
from tests.harness.stack import Stack
from tests.prometheus._server import Prometheus
from tests.prometheus._tools import rule_groups, write_rules

pytestmark = pytest.mark.e2e

MODEL, QUOTA = "zen-chat", "chat-per-day"
KEYS = {"acme": "live-key-acme", "globex": "live-key-globex"}
VARIABLES = {"$job": "meshgate", "$gateway_job": "gateway", "$__rate_interval": "1m"}


def policy(gateway_port: int, backend: ChatStandIn) -> dict[str, Any]:
    """acme may call the chat model, 4 requests a day per model; globex has no role for it."""
    return {
        "version": 1,
        "gateway": {"port": gateway_port},
        "api_keys": [
            {"id": f"{t}-key", "tenant": t, "roles": ["invoker"] if t == "acme" else [],
             "sha256": hashlib.sha256(k.encode()).hexdigest()}
            for t, k in KEYS.items()
        ],
        "tenants": [{"name": "acme", "quotas": [QUOTA]}, {"name": "globex"}],
        "roles": [{"name": "invoker", "models": [MODEL]}],
        "models": [{"name": MODEL, "protocol": "openai",
                    "versions": [{"name": "v1", "endpoints": [f"{backend.host}:{backend.port}"]}]}],
        "quotas": [{"name": QUOTA, "per": ["tenant", "model"], "limit": 4, "window": "day"}],
    }  # fmt: skip


def panel_queries(row: str) -> dict[str, str]:
    """(panel title, query #) -> query with Grafana's variables substituted, for the panels of `row`."""
    panels = json.loads((CHART / "dashboards" / "meshgate.json").read_text())["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == row)
    end = next((i for i in range(start + 1, len(panels)) if panels[i]["type"] == "row"), len(panels))
    out: dict[str, str] = {}
    for title, expr in iter_dashboard_exprs({"panels": panels[start + 1 : end]}):
        for variable, value in VARIABLES.items():
            expr = expr.replace(variable, value)
        out[f"{title} #{sum(k.startswith(title) for k in out) + 1}"] = expr
    return out


# each query of the row -> label sets its answer must hold (a query not listed must just answer)
EXPECTED: dict[str, list[dict[str, str]]] = {
    "Requests per model (gateway) #1": [{"model": MODEL}],
    "Upstream latency p99 per model (gateway) #1": [{"model": MODEL}],
    "5xx share per model (gateway) #1": [{"model": MODEL}],
    "Checks per tenant and model #1": [
        {"tenant": "acme", "model": MODEL, "decision": "allow"},
        {"tenant": "globex", "model": MODEL, "decision": "deny"},
        {"tenant": "unknown", "model": "unknown", "decision": "deny"},  # refused before its model is read
    ],
    "Refused per tenant and model, by reason #1": [
        {"tenant": "globex", "model": MODEL, "code": "role_forbidden"},
        {"tenant": "unknown", "model": "unknown", "code": "invalid_api_key"},
    ],
    "Refused per tenant and model, by reason #2": [{"tenant": "acme", "model": MODEL, "quota": QUOTA}],
    "Refused per tenant and model, by reason #3": [{"model": MODEL}],
    "LLM tokens per tenant and model #1": [
        {"tenant": "acme", "model": MODEL, "kind": "prompt_tokens"},
        {"tenant": "acme", "model": MODEL, "kind": "completion_tokens"},
    ],
}


def test_dashboard_queries_answer_per_tenant_and_model_and_the_rules_load(
    harness: Stack,
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    backend = harness.add(ChatStandIn(harness.workdir)).start()
    port = free_port()
    mg = meshgate_factory(policy(port, backend))
    gateway = envoy_factory(envoy_bootstrap("prometheus-live", xds=mg.address("xds")))
    rules = harness.workdir / "rules"
    rules.mkdir()
    write_rules(rules, {"meshgate": rule_groups("meshgate")})
    prometheus = harness.add(Prometheus(
        harness.workdir,
        {"meshgate": (mg.address("metrics"), "/metrics"),
         "gateway": (f"127.0.0.1:{gateway.admin_port}", "/stats/prometheus")},
        rule_files=(rules / "meshgate-rules.yaml",),
    )).start()  # fmt: skip

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0, trust_env=False) as client:

        def chat(key: str) -> int:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "Is now better than never?"}],
                    "max_tokens": 5}  # fmt: skip
            return client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
                               ).status_code  # fmt: skip

        def traffic(acme: int) -> list[int]:
            return [chat(KEYS["acme"]) for _ in range(acme)] + [chat(KEYS["globex"]), chat("not-a-key")]

        # two rounds, so that counters are seen before and after an increase (rate() needs both)
        assert traffic(2) == [200, 200, 403, 401]
        scraped = [f'meshgate_ratelimit_usage_total{{job="meshgate",tenant="acme",model="{MODEL}"}}',
                   f'envoy_cluster_upstream_rq_total{{job="gateway",envoy_cluster_name="model|{MODEL}|v1"}}']
        for expr in scraped:
            wait_until(lambda e=expr: prometheus.query(e), 20, what=f"Prometheus has {expr}",
                       proc=prometheus.proc)  # fmt: skip
        assert traffic(4) == [200, 200, 429, 429, 403, 401]

    queries = panel_queries("Tenants and models")
    assert set(EXPECTED) <= set(queries)
    for name, expr in queries.items():
        wanted = EXPECTED.get(name, [])

        def answered(expr: str = expr, wanted: list[dict[str, str]] = wanted) -> bool:
            result = prometheus.query(expr)
            found = [sample["metric"] for sample in result]
            missing = [w for w in wanted if not any(w.items() <= f.items() for f in found)]
            # numbers: no NaN (a division by nothing, a histogram Envoy has not flushed yet)
            numbers = all(math.isfinite(float(sample["value"][1])) for sample in result)
            assert found and not missing and numbers, f"answered {result}"  # (the wait reports the last)
            return True

        wait_until(answered, 20, what=f"{name}: {expr} answers {wanted}", proc=prometheus.proc)
    (share,) = prometheus.query(queries["5xx share per model (gateway) #1"])
    assert float(share["value"][1]) == 0  # no 5xx: 0, not "no data"

    def rules_evaluated() -> list[dict[str, Any]]:
        groups = prometheus.api("rules")["groups"]
        evaluated = [r for g in groups for r in g["rules"] if r.get("lastEvaluation", "").startswith("20")]
        return groups if len(evaluated) == sum(len(g["rules"]) for g in groups) else []

    groups = wait_until(rules_evaluated, 20, what="every rule evaluated once", proc=prometheus.proc)
    assert {g["name"] for g in groups} == {"meshgate.recording", "meshgate.alerts"}
    problems = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert problems == []
    job_values = prometheus.api("label/job/values", **{"match[]": "meshgate_policy_generation"})
    assert job_values == ["meshgate"]  # the dashboard's job variable finds meshgate

