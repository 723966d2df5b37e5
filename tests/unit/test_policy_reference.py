"""The README's policy reference is generated from the model: every field documented, and up to date."""

from __future__ import annotations

from pathlib import Path

from meshgate.policy.reference import BEGIN, END, render, undocumented

README = Path(__file__).parents[2] / "README.md"


def test_every_policy_field_has_a_description() -> None:
    assert undocumented() == []


def test_readme_reference_is_current() -> None:
    text = README.read_text()
    start, end = text.find(BEGIN), text.find(END)
    assert start >= 0 and end > start, "README.md lacks the policy reference markers"
    assert text[start : end + len(END)] == render(), (
        "README.md policy reference is stale: run python -m meshgate.policy.reference --write README.md"
    )
