"""The live policy: atomic swap, last good kept, two-phase commit across subscribers, file watch."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import watchfiles
from prometheus_client import CollectorRegistry

from meshgate.policy import Policy
from meshgate.policy.store import Commit, PolicyStore

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


def test_watch_picks_up_a_changed_file(tmp_path: Path) -> None:
    store, path, _ = _store(tmp_path)
    store.reload()

    async def scenario() -> None:
        stop = asyncio.Event()
        watcher = asyncio.create_task(store.watch(stop, debounce_ms=50))
        text = path.read_text().replace("acme", "initech")
        try:
            async with asyncio.timeout(15):
                while store.generation < 2:
                    # the watcher may not be registered yet: swap the file in again until it is seen
                    replacement = tmp_path / "policy.yaml.new"
                    replacement.write_text(text)
                    replacement.replace(path)  # atomic swap, as editors and ConfigMaps do
                    for _ in range(20):
                        if store.generation >= 2:
                            break
                        await asyncio.sleep(0.05)
        finally:
            stop.set()
            await watcher

    asyncio.run(scenario())
    assert store.policy.tenants[0].name == "initech"


def test_watch_ignores_other_files_in_the_directory(tmp_path: Path) -> None:
    store, path, _ = _store(tmp_path)
    change = watchfiles.Change.modified
    assert store._is_policy_change(change, str(path))
    assert store._is_policy_change(change, str(tmp_path / "..data"))  # Kubernetes ConfigMap swap
    assert store._is_policy_change(change, str(tmp_path / "..data_tmp"))
    assert not store._is_policy_change(change, str(tmp_path / "meshgate.log"))
    assert not store._is_policy_change(change, str(tmp_path / "policy.yaml.new"))
