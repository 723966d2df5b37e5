"""The policy loader on arbitrary input: a Policy, or a PolicyError listing at least one issue; never any
other exception. Inputs: arbitrary text and bytes, YAML-shaped text, and examples/policy.yaml mutated
textually (lines dropped, duplicated, spliced with YAML syntax) and structurally (values replaced,
keys dropped or added).

The crashes this found (issue 15: a recursive alias, PyYAML constructor errors) are fixed in
meshgate/policy/_yaml.py; their minimal inputs are kept in CRASHERS as explicit regression cases, and any
exception other than a PolicyError fails the properties.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from meshgate.policy import Policy, PolicyError, load_policy, parse_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
EXAMPLE_TEXT = EXAMPLE.read_text()
EXAMPLE_LINES = EXAMPLE_TEXT.splitlines(keepends=True)
EXAMPLE_DATA = yaml.safe_load(EXAMPLE_TEXT)

# Minimal inputs of the crashes found (issue 15 fuzzing), each a PolicyError now.
CRASHERS = {
    "recursive alias -> RecursionError": "a: &x [*x]\n",
    "merge key onto a scalar -> yaml ConstructorError": "a:\n  <<: 5\n",
    "unknown tag -> yaml ConstructorError": "a: !!python/name:os.system x\n",
    "bad !!binary -> yaml ConstructorError": "a: !!binary 'Z'\n",
    "impossible timestamp -> ValueError": "a: 2001-13-01\n",
    "!!int on a word -> ValueError": "a: !!int x\n",
    "empty !!timestamp -> AttributeError": "!!timestamp",
    "empty !!float -> IndexError": "!!float",
    "empty !!int -> IndexError": "!!int",
}


def check(parse: Any, *args: Any) -> Policy | None:
    """Run the loader; the Policy, None for a PolicyError; any other exception propagates (a failure)."""
    try:
        policy = parse(*args)
    except PolicyError as exc:
        assert exc.issues, "a PolicyError must name at least one issue"
        for issue in exc.issues:
            assert isinstance(issue.line, int) and issue.line >= 0
            assert issue.path and issue.message
        return None
    assert isinstance(policy, Policy)
    return policy


# --- arbitrary text and bytes ------------------------------------------------------------------------
YAML_BITS = st.sampled_from(
    ["\n", "  ", "- ", ": ", "{", "}", "[", "]", ",", "&a ", "*a", "<<: ", "!!str ", "!!binary ", "!!int ",
     "!!float ", "!!timestamp ", "!!set ", "!!omap ", "? ", "|", ">", "'", '"', "#", "---\n", "...\n", "%YAML 1.1\n",
     "\t", "~", "null", "true", "1e400", "0x1F", "-.inf", ".nan", "2001-12-14", "version", "models", "name",
     "versions", "weight", "quotas", "tenants", "roles", "\x00", "\ufeff", "\u2028"]
)  # fmt: skip
YAMLISH = st.lists(st.one_of(YAML_BITS, st.text(max_size=8)), max_size=60).map("".join)


@given(st.one_of(st.text(), YAMLISH))
@example("")
@example("version: 1\n")
@example("- a\n- b\n")
@example("a: " + "[" * 10_000 + "]" * 10_000)
def test_any_text_is_a_policy_or_policy_error(text: str) -> None:
    check(parse_policy, text, "fuzz.yaml")


@given(st.binary(max_size=2048))
@example(b"\xff\xfe\x00")
@example(EXAMPLE_TEXT.encode("utf-16"))
def test_any_bytes_in_a_file_are_a_policy_or_policy_error(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-policy.yaml"
    path.write_bytes(raw)
    check(load_policy, path)


# --- examples/policy.yaml mutated ---------------------------------------------------------------------
@st.composite
def mutated_lines(draw: st.DrawFn) -> str:
    lines = list(EXAMPLE_LINES)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "splice", "indent", "dedent", "swap"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "splice":
            cut = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:cut] + draw(YAML_BITS) + lines[i][cut:]
        elif op == "indent":
            lines[i] = "  " + lines[i]
        elif op == "dedent":
            lines[i] = lines[i][2:] if lines[i].startswith("  ") else lines[i]
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        if not lines:
            break
    return "".join(lines)


@given(mutated_lines())
def test_mutated_example_text(text: str) -> None:
    check(parse_policy, text, "mutated.yaml")


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["", "*", "v1", "acme", "minute", "tokens", "30s", "-1s", "1e9h", "0", "requests"]),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


EXAMPLE_PATHS = _paths(EXAMPLE_DATA)[1:]


@st.composite
def mutated_data(draw: st.DrawFn) -> Any:
    data = yaml.safe_load(EXAMPLE_TEXT)  # a fresh copy
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(EXAMPLE_PATHS))
        parent: Any = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            op = draw(st.sampled_from(["replace", "delete", "add"]))
            if op == "replace":
                parent[path[-1]] = draw(VALUES)
            elif op == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=12))] = draw(VALUES)
            elif isinstance(parent, list):
                parent.append(draw(VALUES))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    return data


@given(mutated_data())
def test_mutated_example_data(data: Any) -> None:
    check(parse_policy, yaml.safe_dump(data, sort_keys=False, allow_unicode=True), "mutated.yaml")


def test_the_example_itself_loads() -> None:
    assert isinstance(check(load_policy, EXAMPLE), Policy)


# --- the crashers found, as explicit regression cases ----------------------------------------------
@pytest.mark.parametrize("text", list(CRASHERS.values()), ids=list(CRASHERS))
def test_known_crash_is_a_policy_error(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text, "crash.yaml")
