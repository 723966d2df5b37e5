"""YAML that PyYAML composes but cannot construct is a PolicyError naming the place, never a crash (found
by tests/fuzz/test_fuzz_policy.py: a traceback from `meshgate validate`, and from `meshgate serve` at
start)."""

from __future__ import annotations

import pytest

from meshgate.policy import PolicyError, parse_policy

CASES = {
    "recursive alias": ("a: &x [*x]\n", "c.yaml:1: a[0]: recursive alias: an anchor used inside itself"),
    "recursive alias in a mapping": ("a: &y {b: *y}\n", "c.yaml:1: a.b: recursive alias"),
    "merge key onto a scalar": ("a:\n  <<: 5\n", "c.yaml:2: a: invalid merge key: expected a mapping"),
    "unknown tag": (
        "a: !!python/name:os.system x\n",
        "c.yaml:1: a: invalid value 'x' (tag tag:yaml.org,2002:python/name:os.system): could not determine",
    ),
    "bad !!binary": ("a: !!binary 'Z'\n", "c.yaml:1: a: invalid value 'Z' (tag tag:yaml.org,2002:binary)"),
    "impossible timestamp": ("a: 2001-13-01\n", "c.yaml:1: a: invalid value '2001-13-01' (tag"),
    "!!int on a word": ("a: !!int x\n", "c.yaml:1: a: invalid value 'x' (tag tag:yaml.org,2002:int)"),
    "empty !!timestamp": ("!!timestamp", "c.yaml:1: <document>: invalid value ''"),
    "empty !!float": ("!!float", "c.yaml:1: <document>: invalid value ''"),
    "empty !!int": ("!!int", "c.yaml:1: <document>: invalid value ''"),
    "mapping as a key": ("? [1, 2]\n: 3\n", "c.yaml:1: <document>: mapping key [1, 2] must be a string"),
}


@pytest.mark.parametrize(("text", "message"), list(CASES.values()), ids=list(CASES))
def test_unconstructible_yaml_is_a_policy_error(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(text, "c.yaml")
    assert message in str(raised.value)


def test_an_alias_used_twice_is_not_a_cycle() -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy("tiers: &t []\nroles: *t\nx: 1\n", "c.yaml")
    assert str(raised.value) == "c.yaml:3: x: unknown key 'x'"
