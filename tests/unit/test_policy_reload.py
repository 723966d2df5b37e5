"""The reload pipeline (meshgate/policy/watch.py): settle, prepare off the loop, check, commit.

The torn-write tests take every line prefix of examples/policy.yaml: a file written in place (`>`) or in
chunks shows a prefix to a reader, and 20 of the 85 prefixes are valid policies (one widens a token quota
from one model to all). Which rule refuses each prefix is stated by `test_which_rule_refuses_each_prefix`;
`test_no_torn_prefix_is_ever_applied` drives the pipeline itself through each of them.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections import Counter
from pathlib import Path

import pytest
import watchfiles
from prometheus_client import CollectorRegistry

from meshgate.health import Health
from meshgate.policy import Policy, PolicyError, parse_policy
from meshgate.policy.load import EMPTY_POLICY
from meshgate.policy.store import Commit, PolicyStore
from meshgate.policy.watch import FilesInput, Paths, Reloader
from meshgate.server import ServeConfig, build_services
from tests.harness.procs import eventually

ROOT = Path(__file__).parents[2]
EXAMPLE = (ROOT / "examples" / "policy.yaml").read_text()
LINES = EXAMPLE.splitlines(keepends=True)
PREFIXES = ["".join(LINES[:n]) for n in range(len(LINES))]  # 0 .. len-1 lines: every proper prefix
VARIANT = EXAMPLE.replace("name: globex", "name: initech").replace("[acme, globex]", "[acme, initech]")


def _store(tmp_path: Path, text: str) -> tuple[PolicyStore, Path, CollectorRegistry]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    registry = CollectorRegistry()
    store = PolicyStore(path, registry=registry)
    assert store.reload()
    return store, path, registry


async def _no_wait(_seconds: float) -> None:
    return None


def _rule(prefix: str) -> str:
    try:
        parse_policy(prefix)
    except PolicyError as exc:
        return "empty" if EMPTY_POLICY in str(exc) else "invalid"
    return "settle"


def test_which_rule_refuses_each_prefix() -> None:
    """Empty (0 bytes or comments only): refused by the empty-document rule, everywhere (validate too).
    Invalid YAML or policy: refused by validation. The rest are valid policies on their own: only the
    settle rule (the bytes must read the same `settle` seconds apart) keeps them out."""
    assert len(PREFIXES) == 85
    rules = {n: _rule(prefix) for n, prefix in enumerate(PREFIXES)}
    assert [n for n, rule in rules.items() if rule == "empty"] == [0, 1, 2, 3]
    settle = [n for n, rule in rules.items() if rule == "settle"]
    # 'version: 1' and the gateway, auth and issuers sections (no tenant, key or model), and the whole
    # file but its last line: the token quota then applies to every model, not to llama-chat alone
    assert settle == [4, 5, 7, 8, 9, 10, 12, 13, 14, 15, 20, 21, 22, 23, 24, 84]
    widened = parse_policy(PREFIXES[84]).quotas[1]
    assert widened.name == "tenant-tokens-per-minute" and widened.models == ("*",)
    assert parse_policy(EXAMPLE).quotas[1].models == ("llama-chat",)


def test_no_torn_prefix_is_ever_applied(tmp_path: Path) -> None:
    """For each prefix: the file holds the prefix when the change is noticed, and the writer finishes
    while the pipeline waits for it to settle. The pipeline must apply the finished file, never the
    prefix. (The writer's completion happens inside the settle wait: deterministic, no timing.)"""
    store, path, _ = _store(tmp_path, VARIANT)
    full, variant = parse_policy(EXAMPLE), store.policy
    applied: list[Policy] = []
    store.subscribe("probe", lambda policy: lambda: applied.append(policy))
    applied.clear()

    async def writer_finishes(_seconds: float) -> None:
        if path.read_text() != EXAMPLE:
            path.write_text(EXAMPLE)

    async def scenario() -> None:
        torn = Reloader([store], settle=1.0, watch=False, sleep=writer_finishes)
        reset = Reloader([store], settle=0.0, watch=False, sleep=_no_wait)
        for prefix in PREFIXES:
            with path.open("w") as f:  # truncate and write in place, like `>`
                f.write(prefix)
            assert await torn.reload(store)
            assert store.policy == full
            path.write_text(VARIANT)
            assert await reset.reload(store)
            assert store.policy == variant
        await torn.stop()
        await reset.stop()

    asyncio.run(scenario())
    assert applied == [full, variant] * len(PREFIXES)


def test_a_prefix_that_stays_is_applied_only_if_valid(tmp_path: Path) -> None:
    """The limit of the rule, stated: a writer that stops half-way for longer than `settle` leaves a
    prefix that is then the file; a valid one is applied, an empty or invalid one is refused."""
    store, path, registry = _store(tmp_path, EXAMPLE)

    async def scenario() -> None:
        reloader = Reloader([store], settle=1.0, watch=False, sleep=_no_wait)
        path.write_text("")
        assert not await reloader.reload(store)
        path.write_text(PREFIXES[40])
        assert not await reloader.reload(store)
        await reloader.stop()

    asyncio.run(scenario())
    assert store.policy == parse_policy(EXAMPLE) and store.generation == 1
    assert registry.get_sample_value("meshgate_policy_reloads_total", {"result": "invalid"}) == 2
    assert registry.get_sample_value("meshgate_policy_last_reload_ok") == 0


def test_a_file_that_changes_while_it_compiles_is_read_again(tmp_path: Path) -> None:
    store, path, _ = _store(tmp_path, EXAMPLE)
    compiled: list[str] = []

    def prepare(policy: Policy) -> Commit:
        compiled.append(policy.tenants[1].name)
        if len(compiled) == 1:
            path.write_text(EXAMPLE.replace("name: globex", "name: umbrella"))  # a writer, meanwhile
        return lambda: None

    store.subscribe("probe", prepare)
    compiled.clear()

    async def scenario() -> None:
        path.write_text(VARIANT)
        reloader = Reloader([store], settle=0.0, watch=False)
        assert await reloader.reload(store)
        await reloader.stop()

    asyncio.run(scenario())
    assert compiled == ["initech", "umbrella"]  # the first compile was discarded: its file had changed
    assert store.policy.tenants[1].name == "umbrella" and store.generation == 2


def test_parse_and_compile_run_off_the_event_loop(tmp_path: Path) -> None:
    """A subscriber's prepare blocks until the loop, which serves calls, has run: if prepare ran on the
    loop, it could never be released."""
    store, path, _ = _store(tmp_path, EXAMPLE)
    started, released = threading.Event(), threading.Event()
    threads: list[int] = []

    def prepare(policy: Policy) -> Commit:
        if policy.tenants[1].name != "initech":  # the live policy, when subscribing
            return lambda: None
        threads.append(threading.get_ident())
        started.set()
        assert released.wait(10), "the event loop was blocked while the policy compiled"
        return lambda: threads.append(threading.get_ident())

    store.subscribe("slow", prepare)

    async def scenario() -> None:
        path.write_text(VARIANT)
        reloader = Reloader([store], settle=0.0, watch=False)
        reloading = asyncio.create_task(reloader.reload(store))
        await eventually(started.is_set)
        released.set()  # the loop runs while the compile is under way
        assert await reloading
        await reloader.stop()

    asyncio.run(scenario())
    loop_thread = threading.get_ident()
    assert threads[0] != loop_thread, "prepare ran on the event loop's thread"
    assert threads[1] == loop_thread, "the commit (the swap) runs on the loop"
    assert store.policy.tenants[1].name == "initech"


def test_inputs_run_in_order_and_a_failing_one_does_not_stop_the_pipeline(tmp_path: Path) -> None:
    store, path, _ = _store(tmp_path, EXAMPLE)
    seen: list[str] = []

    def broken() -> Commit | None:
        seen.append("broken")
        raise RuntimeError("boom")

    def later() -> Commit | None:
        seen.append("later")
        return lambda: seen.append("later committed")

    files = Paths.of(files=[tmp_path / "other.pem"])

    async def scenario() -> None:
        inputs = [store, FilesInput("broken", lambda: files, broken), FilesInput("later", lambda: files, later)]
        reloader = Reloader(inputs, settle=0.0, watch=False)
        await reloader.run()
        path.write_text(VARIANT)
        reloader.request()  # SIGHUP: every input
        await eventually(lambda: reloader.cycles >= 1)
        await reloader.stop()

    asyncio.run(scenario())
    assert store.generation == 2
    assert seen == ["broken", "later", "later committed"]


def test_what_concerns_an_input(tmp_path: Path) -> None:
    policy = Paths.of(files=[tmp_path / "policy.yaml"])
    assert policy.dirs() == {tmp_path}
    assert policy.concerns(tmp_path / "policy.yaml")
    assert policy.concerns(tmp_path / "..data")  # a Kubernetes ConfigMap swap
    assert policy.concerns(tmp_path / "..data_tmp")
    assert not policy.concerns(tmp_path / "policy.yaml.new")
    assert not policy.concerns(tmp_path / "meshgate.log")
    assert not policy.concerns(tmp_path / "sub" / "..data")
    limits = Paths.of(directories=[tmp_path / "limits"])
    assert limits.concerns(tmp_path / "limits" / "edge.yaml")
    assert not limits.concerns(tmp_path / "policy.yaml")


def test_the_watcher_applies_an_atomic_replace(tmp_path: Path) -> None:
    store, path, _ = _store(tmp_path, EXAMPLE)

    async def scenario() -> None:
        reloader = Reloader([store], settle=0.05, watch=True)
        await reloader.run()
        try:
            async with asyncio.timeout(15):
                while store.generation < 2:
                    # the watcher may not be registered yet: swap the file in again until it is seen
                    replacement = tmp_path / "policy.yaml.new"
                    replacement.write_text(VARIANT)
                    replacement.replace(path)  # atomic, as editors and ConfigMaps do
                    for _ in range(40):
                        if store.generation >= 2:
                            break
                        await asyncio.sleep(0.05)
        finally:
            await reloader.stop()

    asyncio.run(scenario())
    assert store.policy.tenants[1].name == "initech"


def test_the_watcher_reports_the_inputs_a_change_concerns(tmp_path: Path) -> None:
    store, path, _ = _store(tmp_path, EXAMPLE)
    (tmp_path / "limits").mkdir()
    limits = FilesInput("ratelimit-config", lambda: Paths.of(directories=[tmp_path / "limits"]), lambda: None)

    async def scenario() -> list[str]:
        reloader = Reloader([store, limits], settle=0.0, watch=False)
        asked: list[str] = []
        reloader.request = lambda *names: asked.extend(names)  # type: ignore[method-assign]
        modified = watchfiles.Change.modified
        reloader._on_changes({(modified, str(tmp_path / "limits" / "a.yaml"))})
        reloader._on_changes({(modified, str(tmp_path / "other.txt"))})
        reloader._on_changes({(modified, str(path))})
        await reloader.stop()
        return asked

    assert asyncio.run(scenario()) == ["ratelimit-config", "policy"]


def test_a_negative_settle_is_refused() -> None:
    with pytest.raises(ValueError, match="settle must be >= 0"):
        Reloader([], settle=-1)


def test_a_reload_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    """meshgate serve freezes what a reload leaves alive (Reloader freeze_gc): that is only sound if a
    reload, through every compiler of meshgate serve, makes no reference cycles that die later. (The
    YAML loader used to keep every node alive in one: ~100,000 objects per reload of a 1000-model
    policy, for the collector.)"""
    path = tmp_path / "policy.yaml"
    path.write_text(EXAMPLE)
    registry = CollectorRegistry()
    store = PolicyStore(path, registry=registry)

    async def scenario() -> list[object]:
        first = parse_policy(EXAMPLE)
        build_services(
            ServeConfig(policy=path), ports={"extauthz": 1, "ratelimit": 2, "xds": 3}, first=first,
            policies=store, health=Health(registry=registry), registry=registry,
        )
        store.prepare(first)()
        reloader = Reloader([store], settle=0.0, watch=False)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            path.write_text(VARIANT)
            assert await reloader.reload(store)
            path.write_text(EXAMPLE)
            assert await reloader.reload(store)
            gc.collect()
            return list(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            await reloader.stop()

    garbage = asyncio.run(scenario())
    assert store.generation == 3
    assert Counter(type(o).__name__ for o in garbage).most_common(5) == []


def test_files_that_read_as_when_last_committed_are_not_compiled_again(tmp_path: Path) -> None:
    """A SIGHUP asks every input: the certificates (a full xds compile) only when their bytes changed;
    an input with no files (a policy that names no certificate) never."""
    cert = tmp_path / "client.pem"
    cert.write_text("one")
    prepared: list[str] = []

    def prepare() -> Commit | None:
        prepared.append(cert.read_text())
        return lambda: None

    async def scenario() -> None:
        certificates = FilesInput("certificates", lambda: Paths.of(files=[cert]), prepare)
        nothing = FilesInput("nothing", lambda: Paths(), lambda: prepared.append("nothing") or None)
        reloader = Reloader([certificates, nothing], settle=0.0, watch=False)
        assert await reloader.reload(certificates)
        assert not await reloader.reload(certificates)  # unchanged
        cert.write_text("two")
        assert await reloader.reload(certificates)
        assert not await reloader.reload(nothing)
        await reloader.stop()

    asyncio.run(scenario())
    assert prepared == ["one", "two"]


def test_a_change_no_file_event_reported_is_reloaded_by_the_resync(tmp_path: Path) -> None:
    """The watcher off (or not yet armed, just after start): the periodic read still finds the change."""
    store, path, _ = _store(tmp_path, EXAMPLE)

    async def scenario() -> None:
        reloader = Reloader([store], settle=0.0, watch=False, resync=0.05)
        await reloader.run()  # reads the inputs as they are now
        try:
            path.write_text(VARIANT)  # no watcher, no SIGHUP: only the resync can see it
            await eventually(lambda: store.generation == 2, timeout=15)
        finally:
            await reloader.stop()

    asyncio.run(scenario())
    assert store.policy.tenants[1].name == "initech"


def test_without_a_change_the_resync_reloads_nothing(tmp_path: Path) -> None:
    store, _, registry = _store(tmp_path, EXAMPLE)

    async def scenario() -> None:
        reloader = Reloader([store], settle=0.0, watch=False, resync=0.01)
        await reloader.run()
        try:
            await eventually(lambda: reloader.resyncs >= 20, timeout=15)  # twenty reads of an unchanged file
            assert reloader.cycles == 0  # none of them asked for a reload
        finally:
            await reloader.stop()

    asyncio.run(scenario())
    assert store.generation == 1
    assert registry.get_sample_value("meshgate_policy_reloads_total", {"result": "unchanged"}) in (None, 0.0)


def test_a_negative_resync_is_refused() -> None:
    with pytest.raises(ValueError, match="resync"):
        Reloader([], resync=-1)
