"""The live policy: atomic swap, last good kept, two-phase commit across subscribers (the file watch and
the reload pipeline: test_policy_reload.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from meshgate.policy import Policy, parse_policy
from meshgate.policy.store import Commit, CompileError, PolicyStore

MINIMAL = Path(__file__).parents[1] / "fixtures" / "policies" / "minimal.yaml"


def _store(tmp_path: Path) -> tuple[PolicyStore, Path, CollectorRegistry]:
    path = tmp_path / "policy.yaml"
    shutil.copy(MINIMAL, path)
    registry = CollectorRegistry()
    store = PolicyStore(path, registry=registry)
    return store, path, registry


def _reloads(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("meshgate_policy_reloads_total", {"result": result}) or 0.0


def test_reload_applies_a_valid_change(tmp_path: Path) -> None:
    store, path, registry = _store(tmp_path)
    assert store.reload() is True
    assert store.generation == 1
    path.write_text(path.read_text().replace("acme", "globex"))
    assert store.reload() is True
    assert store.policy.tenants[0].name == "globex"
    assert store.generation == 2
    assert registry.get_sample_value("meshgate_policy_generation") == 2


def test_unchanged_file_is_not_a_new_generation(tmp_path: Path) -> None:
    store, _, registry = _store(tmp_path)
    store.reload()
    assert store.reload() is False
    assert store.generation == 1
    assert _reloads(registry, "unchanged") == 1


def test_invalid_policy_never_replaces_the_last_good_one(tmp_path: Path) -> None:
    store, path, registry = _store(tmp_path)
    store.reload()
    good = store.policy
    path.write_text("tenants:\n  - name: acme\n    teir: gold\n")
    assert store.reload() is False
    assert store.policy is good
    assert store.generation == 1
    assert _reloads(registry, "invalid") == 1
    assert registry.get_sample_value("meshgate_policy_last_reload_ok") == 0


def test_subscribers_commit_together_or_not_at_all(tmp_path: Path) -> None:
    store, path, registry = _store(tmp_path)
    live: dict[str, str] = {}

    def prepare_a(policy: Policy) -> Commit:
        tenants = ",".join(t.name for t in policy.tenants)
        return lambda: live.__setitem__("a", tenants)

    def prepare_b(policy: Policy) -> Commit:
        if policy.tenants[0].name == "bad":
            raise ValueError("cannot compile")
        tenants = ",".join(t.name for t in policy.tenants)
        return lambda: live.__setitem__("b", tenants)

    store.subscribe("a", prepare_a)
    store.subscribe("b", prepare_b)
    store.reload()
    assert live == {"a": "acme", "b": "acme"}

    path.write_text(path.read_text().replace("acme", "bad"))
    assert store.reload() is False
    assert live == {"a": "acme", "b": "acme"}, "a compile error in b must not let a commit"
    assert store.policy.tenants[0].name == "acme"
    assert _reloads(registry, "compile_error") == 1


def test_late_subscriber_gets_the_live_policy_at_once(tmp_path: Path) -> None:
    store, _, _ = _store(tmp_path)
    store.reload()
    seen: list[str] = []
    store.subscribe("late", lambda p: lambda: seen.append(p.models[0].name))
    assert seen == ["resnet"]


def test_an_empty_or_comment_only_file_is_refused(tmp_path: Path) -> None:
    store, path, registry = _store(tmp_path)
    store.reload()
    for text in ("", "\n  \n", "# policy.yaml, being written\n"):
        path.write_text(text)
        assert store.reload() is False
        assert store.generation == 1 and store.policy.tenants[0].name == "acme"
        assert registry.get_sample_value("meshgate_policy_last_reload_ok") == 0
    assert _reloads(registry, "invalid") == 3


def test_a_compile_error_names_the_subscriber_and_keeps_the_policy(tmp_path: Path) -> None:
    store, _, registry = _store(tmp_path)

    def refuse(policy: Policy) -> Commit:
        raise ValueError("no such certificate")

    store.subscribe("xds", refuse)
    with pytest.raises(CompileError, match="xds could not compile it: ValueError: no such certificate"):
        store.prepare(parse_policy(MINIMAL.read_text()))
    assert store.reload() is False
    assert not store.loaded
    assert _reloads(registry, "compile_error") == 1


def test_a_watched_file_is_read_up_to_a_bound_and_a_failure_says_why(tmp_path: Path) -> None:
    """/dev/zero as the policy was read until memory ran out; now one byte past the largest policy
    (then refused as too large). A file that cannot be read says why (it said only "cannot read")."""
    from meshgate.policy.watch import MAX_READ_BYTES, FileState

    zero = FileState.read(Path("/dev/zero"))
    assert zero.data is not None and len(zero.data) == MAX_READ_BYTES
    missing = FileState.read(tmp_path / "missing.yaml")
    assert (missing.data, missing.error) == (None, "No such file or directory")
