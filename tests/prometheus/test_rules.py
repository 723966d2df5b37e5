"""The chart's alerts in Prometheus's own tools: `promtool check rules` on the rendered PrometheusRule,
and `promtool test rules` unit tests (tests/prometheus/*.yaml) in which every alert fires on the series
that should trigger it, not before its `for`, and resolves when they recover.

Each unit test is shown to depend on its alert's expression: the expression is broken on purpose
(never true, always true, its comparison flipped, its `for` dropped) and promtool must then fail.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus._tools import HERE, VARIANTS, promtool, rule_groups, write_rules

pytestmark = pytest.mark.unit

TESTS = sorted(HERE.glob("*.yaml"))


def _rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> set[str]:
    return {r["alert"] for variant in VARIANTS for r in _rules(rule_groups(variant)) if "alert" in r}


def _tested(path: Path) -> set[str]:
    doc = yaml.safe_load(path.read_text())
    return {t["alertname"] for case in doc["tests"] for t in case.get("alert_rule_test", [])}


def _run(test: Path, tmp: Path, groups: dict[str, list[dict[str, Any]]]) -> tuple[int, str]:
    """promtool test rules `test`, its rule files written beside it in `tmp`."""
    tmp.mkdir(parents=True, exist_ok=True)
    write_rules(tmp, groups)
    shutil.copy(test, tmp / test.name)
    done = promtool("test", "rules", test.name, cwd=tmp)
    return done.returncode, done.stdout + done.stderr


def _rendered() -> dict[str, list[dict[str, Any]]]:
    return {variant: rule_groups(variant) for variant in VARIANTS}


# --- the rules as rendered -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_promtool_check_rules(variant: str, tmp_path: Path) -> None:
    write_rules(tmp_path, {variant: rule_groups(variant)})
    done = promtool("check", "rules", tmp_path / f"{variant}-rules.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_of_the_chart_has_a_unit_test() -> None:
    tested = set().union(*(_tested(t) for t in TESTS))
    assert tested == _alerts()


@pytest.mark.parametrize("test", TESTS, ids=lambda p: p.stem)
def test_alert_fires_and_resolves(test: Path, tmp_path: Path) -> None:
    doc = yaml.safe_load(test.read_text())
    for case in doc["tests"]:
        evals = case["alert_rule_test"]
        firing = [i for i, e in enumerate(evals) if e["exp_alerts"]]
        assert firing, f"{test.name}: no evaluation where the alert fires"
        assert any(not e["exp_alerts"] for e in evals[: firing[0]]), f"{test.name}: nothing before it fires"
        assert any(not e["exp_alerts"] for e in evals[firing[-1] + 1 :]), f"{test.name}: it never resolves"
    code, output = _run(test, tmp_path, _rendered())
    assert code == 0, output


# --- each unit test fails when its alert's expression is broken -----------------------------------

_COMPARISON = re.compile(r"(>|<|==)\s*([0-9.]+)\s*$")
_FLIP = {">": "<=", "<": ">=", "==": "!="}


def _flip(expr: str) -> str:
    found = _COMPARISON.search(expr.rstrip())
    assert found, f"no final comparison in {expr!r}"
    return expr.rstrip()[: found.start()] + f"{_FLIP[found.group(1)]} {found.group(2)}"


MUTANTS = {
    "never": lambda rule: {**rule, "expr": "vector(1) > 2"},
    "always": lambda rule: {**rule, "expr": "vector(1)"},
    "flipped": lambda rule: {**rule, "expr": _flip(rule["expr"])},
    "no_for": lambda rule: {k: v for k, v in rule.items() if k != "for"},
}


def _cases() -> list[Any]:
    cases = []
    for alert in sorted(_alerts()):
        for name in MUTANTS:
            rules = [r for v in VARIANTS for r in _rules(rule_groups(v)) if r.get("alert") == alert]
            if name == "no_for" and not any("for" in r for r in rules):
                continue  # fires at once by design
            cases.append(pytest.param(alert, name, id=f"{alert}-{name}"))
    return cases


@pytest.mark.parametrize(("alert", "mutant"), _cases())
def test_a_broken_expression_fails_its_unit_test(alert: str, mutant: str, tmp_path: Path) -> None:
    broken = _rendered()
    for groups in broken.values():
        for group in groups:
            group["rules"] = [MUTANTS[mutant](r) if r.get("alert") == alert else r for r in group["rules"]]
    tests = [t for t in TESTS if alert in _tested(t)]
    assert tests
    for test in tests:
        code, output = _run(test, tmp_path / test.stem, broken)
        assert code != 0, f"{test.name} still passes with {alert} {mutant}:\n{output}"


def test_a_broken_recording_rule_fails_the_canary_tests(tmp_path: Path) -> None:
    """The canary alert reads recording rules: breaking the one that names model and version fails it."""
    broken = _rendered()
    for groups in broken.values():
        for group in groups:
            for rule in group["rules"]:
                if rule.get("record") == "meshgate:version_upstream_rq:rate10m":
                    rule["expr"] = rule["expr"].replace('"model", "$1"', '"modelname", "$1"')
    for test in (HERE / "canary_error_rate.yaml", HERE / "canary_error_rate_istio.yaml"):
        code, output = _run(test, tmp_path / test.stem, broken)
        assert code != 0, output
