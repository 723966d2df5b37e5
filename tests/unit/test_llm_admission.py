"""The tokens an LLM request asks for at admission (extauthz's `tokens` metadata, checked by the token
quota): the prompt's estimate + max_tokens; without max_tokens, the model's context limit (the backend
may generate up to it). decide() as the servicer calls it; no sockets."""

from __future__ import annotations

import json

from meshgate.extauthz import CheckInput, decide
from tests.unit.test_extauthz_support import make_table, mint, policy_doc

TABLE = make_table()  # llama-chat: openai, context_limit_tokens 4096


def asked(body: dict[str, object], table: object = TABLE) -> int:
    req = CheckInput(method="POST", path="/v1/chat/completions",
                     headers={"authorization": f"Bearer {mint()}"}, body=json.dumps(body).encode())  # fmt: skip
    decision = decide(table, req)  # type: ignore[arg-type]
    assert decision.allowed, decision.message
    assert decision.target is not None
    return decision.target.tokens


def test_without_max_tokens_the_context_limit_is_asked_for() -> None:
    messages = [{"role": "user", "content": "x" * 40}]  # 10 tokens by the estimate
    assert asked({"model": "llama-chat", "messages": messages, "max_tokens": 100}) == 110
    assert asked({"model": "llama-chat", "messages": messages, "max_completion_tokens": 7}) == 17
    assert asked({"model": "llama-chat", "messages": messages}) == 4096
    assert asked({"model": "llama-chat", "messages": messages, "stream": True}) == 4096


def test_without_a_context_limit_only_the_prompt_is_known() -> None:
    doc = policy_doc()
    for model in doc["models"]:
        model.pop("context_limit_tokens", None)
    messages = [{"role": "user", "content": "x" * 40}]
    assert asked({"model": "llama-chat", "messages": messages}, make_table(doc)) == 10
