"""A prompt counted by its model's tokenizer does not hold up the other Checks: ExtAuthzService on a real
grpc.aio server (port 0), through a real Authorization stub.

The tokenizer is a real `tokenizer.json` (tests/unit/test_extauthz_prompt.py's word tokenizer) whose
count, for one marked prompt, waits on an Event the test sets: a huge prompt is being counted for as
long as the test says. This tests where the count runs (scheduling), not how fast the tokenizer is.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from google.rpc import code_pb2

from meshgate.extauthz.counting import INLINE_PROMPT_CHARS
from meshgate.extauthz.prompt import TokenCounter
from tests.service.test_extauthz_service import check_request, new_service, serving
from tests.unit.test_extauthz_prompt import chat_body, word_tokenizer
from tests.unit.test_extauthz_support import API_KEY, policy_doc

MARK = "huge"
HELD_FOR = 30.0  # seconds a marked count waits at most: without the fix the test fails, not hangs


def asked(response: Any) -> int:
    return int(response.dynamic_metadata.fields["meshgate"].struct_value.fields["tokens"].number_value)


def test_other_checks_are_answered_while_a_huge_prompt_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = policy_doc()
    chat = next(m for m in doc["models"] if m["name"] == "llama-chat")
    chat["tokenizer"] = str(word_tokenizer(tmp_path / "tokenizer.json", ["hello", "world", MARK]))
    counting, release = threading.Event(), threading.Event()
    count, marked = TokenCounter.count, []

    def held(self: TokenCounter, texts: Any) -> int:
        texts = list(texts)
        if any(MARK in text for text in texts):
            marked.append(threading.current_thread().name)
            counting.set()
            release.wait(HELD_FOR)
        return count(self, texts)

    monkeypatch.setattr(TokenCounter, "count", held)
    service, _ = new_service(tmp_path, doc)
    huge = " ".join([MARK] * 2000)  # 2000 tokens, ~10k characters: counted in the pool
    assert len(huge) > INLINE_PROMPT_CHARS

    async def scenario() -> None:
        async with serving(service) as stub:
            path, key = "/v1/chat/completions", {"x_api_key": API_KEY}
            slow = asyncio.ensure_future(stub.Check(check_request(path, chat_body(huge, 10), **key)))
            assert await asyncio.to_thread(counting.wait, HELD_FOR)  # the huge prompt's count has begun
            # meanwhile: a short prompt (counted inline), a KServe request, a denial: all answered
            short = await stub.Check(check_request(path, chat_body("hello world", 5), **key))
            assert short.status.code == code_pb2.OK and asked(short) == 2 + 5
            kserve = await stub.Check(check_request(**key))
            assert kserve.status.code == code_pb2.OK
            denied = await stub.Check(check_request(path, chat_body(huge, 10)))  # no credentials
            assert denied.status.code == code_pb2.UNAUTHENTICATED
            assert not slow.done() and not release.is_set()  # answered while the count was still held
            release.set()
            answer = await slow
            assert answer.status.code == code_pb2.OK and asked(answer) == 2000 + 10  # the same decision
            again = await stub.Check(check_request(path, chat_body(huge, 10), **key))
            assert asked(again) == 2000 + 10
            assert len(marked) == 1 and marked[0].startswith("meshgate-tokenizer")  # cached; in the pool

    asyncio.run(scenario())
    release.set()
