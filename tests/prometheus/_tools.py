"""Prometheus's own tools for the chart's rules: the binaries, and the rule groups as the chart renders them.

`promtool` and `prometheus` come from Debian's `prometheus` package (`apt-get install prometheus`;
.ci/run installs it). Without them these tests skip, saying so, unless MESHGATE_REQUIRE_PROMETHEUS is
set (CI sets it): then a missing binary is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshgate import binaries
from tests.chart._chart import case_values, find, objects, render

__all__ = ["HERE", "VARIANTS", "binary", "promtool", "rule_groups", "write_rules"]

HERE = Path(__file__).resolve().parent
VARIANTS: dict[str, dict[str, Any]] = {
    # meshgate's own xDS (cluster names model|MODEL|VERSION), the chart's defaults with the rules on
    "meshgate": {"metrics": {"prometheusRule": {"enabled": True}}},
    # istio.enabled: the canary's recording rule reads Istio's outbound|PORT|SUBSET|HOST clusters
    "istio": case_values("istio"),
}


def binary(name: str) -> str:
    """The path of `name` (promtool, prometheus), or a skip naming how to install it (a failure in CI)."""
    try:
        return binaries.find(name)
    except binaries.MissingExecutable as missing:
        message = str(missing)
    if os.environ.get("MESHGATE_REQUIRE_PROMETHEUS"):
        pytest.fail(message + " and MESHGATE_REQUIRE_PROMETHEUS is set")
    pytest.skip(message)


@cache
def _groups(variant: str) -> tuple[str, ...]:
    rule = find(objects(render(VARIANTS[variant])), "PrometheusRule")
    return (yaml.safe_dump(rule["spec"]["groups"], sort_keys=False),)


def rule_groups(variant: str) -> list[dict[str, Any]]:
    """The PrometheusRule's `spec.groups` of the rendered chart (a fresh copy each call)."""
    groups: list[dict[str, Any]] = yaml.safe_load(_groups(variant)[0])
    return groups


def write_rules(directory: Path, groups: dict[str, list[dict[str, Any]]]) -> None:
    """`<variant>-rules.yaml` in `directory` for each variant: a Prometheus rule file (what the
    prometheus-operator hands Prometheus from the PrometheusRule)."""
    for variant, rules in groups.items():
        text = yaml.safe_dump({"groups": rules}, sort_keys=False)
        (directory / f"{variant}-rules.yaml").write_text(text)


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [binary("promtool"), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=cwd)
