"""What extauthz keeps and logs of hostile client input stays within the byte bounds of bounds.py.

Memory is measured with tracemalloc (what the caches really retain), next to each cache's own count of
its bytes (what meshgate_extauthz_cache_bytes reports).
"""

from __future__ import annotations

import gc
import json
import logging
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from meshgate.extauthz import Authorizer, CheckInput, decide
from meshgate.extauthz.audit import AuditLog
from meshgate.extauthz.bounds import (
    DECISION_ENTRY_BYTES,
    LOGGED_STRING_BYTES,
    PATH_MEMO_BYTES,
    LogLimiter,
    clip,
)
from meshgate.extauthz.cache import BoundedMemo
from meshgate.extauthz.target import PATHS
from tests.unit.test_extauthz_support import API_KEY, make_table

MiB = 1 << 20
LONG = 60 << 10  # the fault run's 60 KiB strings


@pytest.fixture(autouse=True)
def empty_path_memo() -> Iterator[None]:
    PATHS.clear()
    yield
    PATHS.clear()


def retained(work: Callable[[], object]) -> int:
    """Bytes still allocated (tracemalloc) after `work` ran and its garbage was collected."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        work()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def long_name(i: int, size: int = LONG) -> str:
    return f"{i:08d}" + "m" * (size - 8)


def test_clip_cuts_to_the_byte_bound_at_a_character_boundary() -> None:
    assert clip("short") == "short"
    exact = "a" * LOGGED_STRING_BYTES
    assert clip(exact) == exact
    cut = clip("é" * 1000)  # 2 bytes each
    assert cut.endswith("...") and len(cut[:-3].encode()) <= LOGGED_STRING_BYTES
    assert cut[:-3] == "é" * (LOGGED_STRING_BYTES // 2)
    assert len(clip("\U0001f600" * 100, 10)[:-3].encode()) == 8  # never half a character
    assert clip("\ud800" * 300).endswith("...")  # a lone surrogate (JSON "\ud800") is no error


def test_log_limiter_writes_one_line_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limiter = LogLimiter(logging.getLogger("test.limiter"), every=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.limiter"):
        assert [limiter.log(logging.WARNING, "bad request %d", i) for i in range(5)] == [True] + [False] * 4
        now[0] = 10.0
        assert limiter.log(logging.WARNING, "bad request %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "bad request 0",
        "bad request 5 (4 more like this since the last such line, not logged)",
    ]


def test_bounded_memo_keeps_its_budget_and_refuses_large_entries() -> None:
    memo: BoundedMemo[int, str] = BoundedMemo(10_000, max_entry_bytes=1_000)
    for i in range(1000):
        memo.put(i, "x", 500)
    assert memo.bytes <= 10_000 and len(memo) == memo.bytes // memo._sizes[999]
    assert memo.get(999) == "x" and memo.get(0) is None  # the oldest went first
    assert memo.put(-1, "big", 5_000) is False and memo.get(-1) is None
    memo.clear()
    assert memo.bytes == 0 and len(memo) == 0


def test_invalid_api_key_with_distinct_long_paths_keeps_nothing() -> None:
    """The fault run: invalid key + distinct 60 KiB paths kept 121 KiB each (the path memo runs before
    authentication)."""
    authorizer = Authorizer(make_table())

    def hostile() -> None:
        for i in range(200):
            path = f"/v2/models/{long_name(i)}/infer"
            decision, _ = authorizer.decide(CheckInput(method="POST", path=path, headers={"x-api-key": "no"}))
            assert decision.code == "invalid_api_key"

    assert retained(hostile) < 1 * MiB  # 200 x 121 KiB = 24 MiB before
    assert PATHS.bytes == 0 and len(authorizer.cache) == 0


def test_path_memo_stays_within_its_budget_and_counts_what_it_holds() -> None:
    table = make_table()

    def many_paths() -> None:
        for i in range(20_000):
            path = f"/v2/models/m{i}/versions/{i}/ready"
            decide(table, CheckInput(method="GET", path=path, headers={"x-api-key": "no"}))

    real = retained(many_paths)
    assert 0 < PATHS.bytes <= PATH_MEMO_BYTES
    assert real <= PATHS.bytes  # its own count is not below what it really holds
    assert len(PATHS) < 20_000


def test_valid_key_with_distinct_huge_model_names_is_not_cached() -> None:
    """Decisions for a 60 KiB model name (403 model_forbidden, authenticated) are over the per-entry
    bound: computed each time, never kept; their message quotes the name clipped."""
    authorizer = Authorizer(make_table())
    messages = []

    def hostile() -> None:
        for i in range(300):
            body = json.dumps({"model": long_name(i), "max_tokens": 1}).encode()
            req = CheckInput(
                method="POST", path="/v1/chat/completions", headers={"x-api-key": API_KEY}, body=body
            )
            decision, _ = authorizer.decide(req)
            assert decision.code == "model_forbidden"
            messages.append(len(decision.message.encode()))

    assert retained(hostile) < 2 * MiB  # 300 x (60 KiB name + 60 KiB message) = 36 MiB before
    assert len(authorizer.cache) == 0 and authorizer.cache.bytes == 0
    assert max(messages) < LOGGED_STRING_BYTES + 100


def test_decision_cache_stays_within_its_byte_budget() -> None:
    budget = 1 * MiB
    authorizer = Authorizer(make_table(), cache_bytes=budget)
    size = DECISION_ENTRY_BYTES // 4

    def distinct_models() -> None:
        for i in range(1000):
            req = CheckInput(
                method="POST", path=f"/v2/models/{long_name(i, size)}/infer", headers={"x-api-key": API_KEY}
            )
            assert authorizer.decide(req)[0].code == "model_forbidden"

    real = retained(distinct_models)
    assert 0 < authorizer.cache.bytes <= budget
    assert real <= authorizer.cache.bytes + PATH_MEMO_BYTES  # (paths this long are not memoized)
    assert 0 < len(authorizer.cache) < 1000


def test_decision_cache_counts_at_least_what_typical_entries_hold() -> None:
    """The fixed overheads in cache.py are not below what CPython 3.11 allocates for an entry."""
    authorizer = Authorizer(make_table())

    def typical() -> None:
        for i in range(2000):
            path = f"/v2/models/m{i}/infer"
            authorizer.decide(CheckInput(method="POST", path=path, headers={"x-api-key": API_KEY}))

    real = retained(typical)
    assert len(authorizer.cache) == 2000
    assert real <= authorizer.cache.bytes + PATHS.bytes


@pytest.mark.parametrize("depth", [100_000, 2_000])
def test_deeply_nested_json_body_is_invalid_body(depth: int) -> None:
    table = make_table()
    for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        req = CheckInput(
            method="POST", path="/v1/chat/completions", headers={"x-api-key": API_KEY}, body=body
        )
        decision = decide(table, req)
        assert (decision.code, decision.status) == ("invalid_body", 400)


def test_deep_messages_the_parser_accepts_are_counted_without_recursion() -> None:
    """Nesting the JSON parser still takes (under its limit) is walked by a loop, not by recursion."""
    table = make_table()
    inner = b"[" * 900 + b'"abcd"' + b"]" * 900
    body = b'{"model": "llama-chat", "max_tokens": 0, "messages": ' + inner + b"}"  # tokens: the prompt's
    req = CheckInput(method="POST", path="/v1/chat/completions", headers={"x-api-key": API_KEY}, body=body)
    decision = decide(table, req)
    assert decision.code == "ok" and decision.target is not None and decision.target.tokens == 1


def test_audit_line_clips_client_chosen_strings(caplog: pytest.LogCaptureFixture) -> None:
    """The fault run: 185 MB of audit log for 3,000 requests with a 60 KiB model name."""
    table = make_table()
    req = CheckInput(
        method="POST",
        path=f"/v2/models/{long_name(1)}/versions/{long_name(2)}/infer",
        headers={"x-api-key": API_KEY},
        request_id="r" * LONG,
    )
    decision = decide(table, req)
    with caplog.at_level(logging.INFO, logger="meshgate.extauthz.audit"):
        AuditLog().record(decision, req, decision_id="id", cached=False)  # no loop: logged at once
    [line] = [r.getMessage() for r in caplog.records]
    record = json.loads(line)
    assert len(line) < 3 * LOGGED_STRING_BYTES + 512  # three clipped strings, the rest is short
    for field in ("model", "version", "request_id"):
        assert record[field].endswith("...") and len(record[field].encode()) <= LOGGED_STRING_BYTES + 3
    assert record["model"].startswith("00000001mmm")
