"""The per-check metrics: plain counts, exported as Prometheus samples when the registry is collected."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from meshgate.extauthz import Decision, Identity, Target
from meshgate.extauthz.metrics import CheckMetrics

WHO = Identity(tenant="acme", user="alice", tier="gold", roles=(), credential="jwt:test")
ALLOW = Decision(code="ok", identity=WHO, target=Target(kind="model", model="m"))


def test_decisions_by_decision_code_and_bounded_tenant_and_model() -> None:
    registry = CollectorRegistry()
    metrics = CheckMetrics(registry)
    metrics.tenants = frozenset({"acme"})
    metrics.models = frozenset({"m"})
    metrics.count(ALLOW, "acme", "m")
    metrics.count(ALLOW, "acme", "m")
    metrics.count(Decision.deny("unknown_tenant", "no"), "made-up-by-the-caller", "made-up-model")
    metrics.count(Decision.deny("missing_credentials", "no"), "")
    sample = registry.get_sample_value
    allow = {"decision": "allow", "code": "ok", "tenant": "acme", "model": "m"}
    assert sample("meshgate_extauthz_decisions_total", allow) == 2
    assert sample(
        "meshgate_extauthz_decisions_total",
        {"decision": "deny", "code": "unknown_tenant", "tenant": "unknown", "model": "unknown"},
    ) == 1  # fmt: skip
    assert sample(
        "meshgate_extauthz_decisions_total",
        {"decision": "deny", "code": "missing_credentials", "tenant": "unknown", "model": "unknown"},
    ) == 1  # fmt: skip


def test_latency_histogram_by_cache_result() -> None:
    registry = CollectorRegistry()
    metrics = CheckMetrics(registry)
    for seconds in (0.00004, 0.00005, 0.0003, 7.0):
        metrics.observe(seconds, cached=True)
    metrics.observe(0.002, cached=False)
    sample = registry.get_sample_value
    hit = {"cache": "hit"}
    assert sample("meshgate_extauthz_check_seconds_bucket", {**hit, "le": "5e-05"}) == 2  # le: bound included
    assert sample("meshgate_extauthz_check_seconds_bucket", {**hit, "le": "0.0005"}) == 3
    assert sample("meshgate_extauthz_check_seconds_bucket", {**hit, "le": "+Inf"}) == 4
    assert sample("meshgate_extauthz_check_seconds_count", hit) == 4
    assert abs(sample("meshgate_extauthz_check_seconds_sum", hit) - 7.00039) < 1e-9  # type: ignore[operator]
    assert sample("meshgate_extauthz_check_seconds_count", {"cache": "miss"}) == 1
    metrics.errors.labels("internal").inc()
    text = generate_latest(registry).decode()
    assert 'meshgate_extauthz_unavailable_total{reason="internal"} 1.0' in text
    assert "# TYPE meshgate_extauthz_check_seconds histogram" in text
