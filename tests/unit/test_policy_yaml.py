"""YAML that PyYAML composes but cannot construct is a PolicyError naming the place, never a crash (found
by tests/fuzz/test_fuzz_policy.py: a traceback from `meshgate validate`, and from `meshgate serve` at
start)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from meshgate.policy import PolicyError, _yaml, parse_policy
from meshgate.policy.errors import Issue
from meshgate.policy.load import parse_policy_bytes

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
    "!!int on a word": ("a: !!int x\n", "c.yaml:1: a: invalid number 'x': write it in decimal"),
    "empty !!timestamp": ("!!timestamp", "c.yaml:1: <document>: invalid value ''"),
    "empty !!float": ("!!float", "c.yaml:1: <document>: invalid value ''"),
    "empty !!int": ("!!int", "c.yaml:1: <document>: invalid number ''"),
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


# "billion laughs": each anchor is a list of 9 uses of the one before; an alias is converted and
# validated again at each use, so 342 bytes would take minutes and gigabytes (a MemoryError under a
# ulimit) in `meshgate validate`, and in a running server's reload of the same bytes
EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yaml"
EXPANDED = "nodes once its aliases are expanded, more than 1,000,000 (an anchor used again and again)"


def _bomb(levels: int, item: str = "{}: &{} [{}]") -> list[str]:
    out = [item.format("a", "a", ",".join(['"lol"'] * 9))]
    for prev, name in itertools.pairwise("abcdefghi"[:levels]):
        out.append(item.format(name, name, ",".join([f"*{prev}"] * 9)))
    return out


def _refused(text: str) -> Issue:
    with pytest.raises(PolicyError) as raised:
        parse_policy_bytes(text.encode(), "c.yaml")  # what `load_policy` and a server's reload parse
    [issue] = raised.value.issues
    return issue


def test_a_billion_laughs_is_refused_before_it_is_expanded() -> None:
    text = "\n".join(_bomb(9)) + "\n"
    assert len(text) == 342
    issue = _refused(text)
    assert isinstance(issue.line, int) and issue.line >= 1
    assert str(issue) == f"c.yaml:7: <document>: the document holds 490,329,064 {EXPANDED}"


BOMBS = {
    "under an unknown key": "version: 1\nx-extra:\n" + "\n".join("  " + b for b in _bomb(8)) + "\n",
    "inside a list field": (
        "version: 1\ntenants:\n  - name: acme\n    tier: free\n    allowed_origins:\n"
        + "\n".join(_bomb(8, "      - &{1} [{2}]"))
        + "\n"
    ),
}


@pytest.mark.parametrize("text", list(BOMBS.values()), ids=list(BOMBS))
def test_a_nested_billion_laughs_is_refused(text: str) -> None:
    issue = _refused(text)
    assert issue.line >= 3 and issue.path == "<document>"
    assert issue.message.startswith("the document holds ") and issue.message.endswith(EXPANDED)


def test_a_document_past_the_bound_without_aliases_does_not_blame_an_anchor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_yaml, "MAX_NODES", 10)
    assert str(_refused("a: [1, 2, 3, 4, 5]\nb: [6, 7]\n")) == (
        "c.yaml:1: <document>: the document holds 12 nodes, more than 10"
    )


def test_an_anchor_used_for_two_tenants_still_loads() -> None:
    text = EXAMPLE.read_text()
    text = text.replace(
        "allowed_origins: [https://app.acme.example]", "allowed_origins: &o [https://a.example]"
    )
    text = text.replace("    tier: free\n", "    tier: free\n    allowed_origins: *o\n", 1)
    policy = parse_policy(text, "c.yaml")
    assert [t.allowed_origins for t in policy.tenants] == [("https://a.example",)] * 2


def test_nesting_deeper_than_the_bound_is_an_error_not_a_recursion_error() -> None:
    ok = "x: " + "[" * (_yaml.MAX_DEPTH - 2) + "]" * (_yaml.MAX_DEPTH - 2) + "\n"
    assert str(_refused(ok)) == "c.yaml:1: x: unknown key 'x'"  # legal YAML, converted
    deep = "x: " + "[" * 900 + "]" * 900 + "\n"  # libyaml allows 1000 levels
    assert (
        str(_refused(deep))
        == f"c.yaml:1: <document>: the document nests more than {_yaml.MAX_DEPTH} levels deep"
    )


def test_a_byte_yaml_or_utf_8_refuses_is_reported_at_its_line() -> None:
    """A NUL (YAML refuses it) and a byte that is not UTF-8 each name their line and say what they are,
    on one line (they were reported at line 1 over two lines, and at line 0)."""
    with pytest.raises(PolicyError) as caught:
        parse_policy_bytes(b"version: 1\ntenants:\n  - {name: a\x00b}\n", "p.yaml")
    assert [str(i) for i in caught.value.issues] == [
        "p.yaml:3: <document>: invalid YAML: unacceptable character #x0000"
    ]
    with pytest.raises(PolicyError) as caught:
        parse_policy_bytes(b"version: 1\n# caf\xe9\n", "p.yaml")
    assert [str(i) for i in caught.value.issues] == [
        "p.yaml:2: <document>: not UTF-8: byte 16 (0xe9): invalid continuation byte"
    ]


@pytest.mark.parametrize("number", ["1:00", "0x3c", "010", "0b111100", "1:00.5"])
def test_a_number_yaml_1_1_reads_in_another_base_is_refused(number: str) -> None:
    """YAML 1.1 reads 010 as 8 and 1:00 as 60: a policy says so instead of counting 8 or 60."""
    with pytest.raises(PolicyError) as caught:
        parse_policy(f"quotas: [{{name: q, per: tenant, limit: {number}, window: second}}]\n", "p.yaml")
    assert [str(i) for i in caught.value.issues] == [
        f"p.yaml:1: quotas[0].limit: invalid number {number!r}: write it in decimal"
    ]


def test_decimal_numbers_are_read_as_written() -> None:
    policy = parse_policy("quotas: [{name: q, per: tenant, limit: 1_000, window: second}]\n", "p.yaml")
    assert policy.quotas[0].limit == 1000
