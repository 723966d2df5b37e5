# ruff: noqa: RUF001  (the samples hold full-width punctuation, as Chinese and Japanese text does)
"""Prompt tokens: the estimate against real tokenizers on several scripts, and a model's own tokenizer.

Reference counts: OpenAI's cl100k_base (GPT-4) and o200k_base (GPT-4o) tokenizers, as implemented by the
`bpe-openai` package 0.1.4 (the Rust `bpe-openai` crate, which ships both vocabularies), measured once
on these exact strings and pinned here (no tokenizer download at test time).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from meshgate.extauthz import Authorizer, CheckInput, decide
from meshgate.extauthz.core import Counting
from meshgate.extauthz.prompt import TokenCounter, estimate_tokens
from tests.unit.test_extauthz_support import API_KEY, make_table, policy_doc

# name: (text, (cl100k_base tokens, o200k_base tokens))
SAMPLES: dict[str, tuple[str, tuple[int, int]]] = {
    'english': ('The quick brown fox jumps over the lazy dog. Explicit is better than implicit, and simple is better than complex; readability counts.', (26, 26)),
    'chinese': ('我们的模型服务网关负责身份验证、速率限制以及路由。请告诉我明天北京的天气怎么样，以及是否需要带伞。', (49, 32)),
    'japanese': ('東京の天気は明日晴れるでしょうか。このゲートウェイは認証とレート制限を行います。ありがとうございました。', (45, 30)),
    'korean': ('안녕하세요. 이 게이트웨이는 인증과 속도 제한을 담당합니다. 내일 서울 날씨는 어떨까요?', (49, 27)),
    'russian': ('Привет! Этот шлюз отвечает за аутентификацию, ограничение скорости и маршрутизацию запросов к моделям.', (48, 28)),
    'code': ('def decide(table, req):\n    cred = _credential(table, req)\n    if isinstance(cred, Decision):\n        return cred\n    try:\n        target = resolve_target(req)\n    except TargetError as exc:\n        target = exc\n    return {"ok": [x**2 for x in range(10) if x % 3 == 0]}\n', (74, 74)),
    'emoji': ('🎉🚀😀👍🏽❤️🔥🙏 👨\u200d👩\u200d👧\u200d👦 🇫🇷🇯🇵 ✅❌⭐', (58, 34)),
    'arabic': ('مرحبا بكم في بوابة النماذج التي تتولى المصادقة وتحديد المعدل والتوجيه.', (47, 24)),
    'hindi': ('नमस्ते, यह गेटवे प्रमाणीकरण, दर सीमा और रूटिंग का काम करता है।', (62, 24)),
    'thai': ('สวัสดีครับ เกตเวย์นี้ทำหน้าที่ยืนยันตัวตนและจำกัดอัตรา', (49, 24)),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_estimate_never_undercounts_a_real_tokenizer_by_more_than_1_5x(name: str) -> None:
    text, reference = SAMPLES[name]
    estimate = estimate_tokens([text])
    assert max(reference) / estimate <= 1.5, (name, estimate, reference)
    assert estimate <= 2.5 * min(reference), (name, estimate, reference)  # nor overcounts wildly


def test_characters_over_4_undercounted_cjk_and_emoji() -> None:
    """What the old estimate did (why it changed): 3.8x under on Chinese and Korean, 8x on emoji."""
    for name in ("chinese", "japanese", "korean", "russian", "emoji", "hindi"):
        text, reference = SAMPLES[name]
        assert max(reference) / math.ceil(len(text) / 4) > 1.5, name


def test_estimate_splits_texts_and_odd_input() -> None:
    assert estimate_tokens([]) == 0
    assert estimate_tokens(["abcd", "efgh"]) == 2
    assert estimate_tokens(["\ud800"]) == 1  # a lone surrogate (JSON allows one) counts, never raises


# --- the model's own tokenizer -----------------------------------------------------------------------


def word_tokenizer(path: Path, words: list[str]) -> Path:
    """A real tokenizer.json, built with the tokenizers library: one token per known word, [UNK] else."""
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))
    return path


def table_with_tokenizer(path: Path):  # type: ignore[no-untyped-def]
    doc = policy_doc()
    chat = next(m for m in doc["models"] if m["name"] == "llama-chat")
    chat["tokenizer"] = str(path)
    return make_table(doc)


def chat_body(prompt: str, max_tokens: int = 10) -> bytes:
    return json.dumps({"model": "llama-chat", "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": prompt}]}).encode()  # fmt: skip


def test_a_policy_tokenizer_counts_the_prompt(tmp_path: Path) -> None:
    path = word_tokenizer(tmp_path / "tokenizer.json", ["hello", "world", "again"])
    assert TokenCounter(str(path)).count(["hello world", "again ?"]) == 4  # "?" is [UNK]: one token
    table = table_with_tokenizer(path)
    # 26 characters, 5 words (xy unknown): the tokenizer's 5 tokens, not the estimate's 7
    prompt = "hello world hello world xy"
    req = CheckInput(method="POST", path="/v1/chat/completions", headers={"x-api-key": API_KEY},
                     body=chat_body(prompt))  # fmt: skip
    assert estimate_tokens([prompt]) == 7
    decision = decide(table, req)
    assert decision.allowed and decision.target is not None
    assert decision.target.tokens == 5 + 10 and decision.target.texts == ()  # no prompt kept
    # without the tokenizer, the same request asks for the estimate
    plain = decide(make_table(), req)
    assert plain.target is not None and plain.target.tokens == 7 + 10


def test_the_decision_cache_keys_a_tokenized_prompt_by_its_text(tmp_path: Path) -> None:
    """Two prompts of equal length (equal estimates) but different token counts: two decisions."""
    table = table_with_tokenizer(word_tokenizer(tmp_path / "tokenizer.json", ["aaaa", "bbbb"]))
    authorizer = Authorizer(table)
    asks = []
    for prompt in ("aaaa bbbb", "aaaabbbbb"):  # 2 tokens; 1 token ([UNK])
        req = CheckInput(method="POST", path="/v1/chat/completions", headers={"x-api-key": API_KEY},
                         body=chat_body(prompt, max_tokens=0))  # fmt: skip
        decision, cached = authorizer.decide(req)
        assert not cached and decision.target is not None
        asks.append(decision.target.tokens)
    assert asks == [2, 1]


def test_an_unreadable_tokenizer_refuses_the_policy(tmp_path: Path) -> None:
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    for path in (broken, tmp_path / "missing.json"):
        with pytest.raises(ValueError, match=r"model llama-chat tokenizer: cannot read tokenizer"):
            table_with_tokenizer(path)
    # a device or a directory is refused before it is read (/dev/zero would be read until memory ends)
    for path in (Path("/dev/zero"), tmp_path):
        with pytest.raises(ValueError, match=r"cannot read tokenizer .*: not a regular file of at most 64 MiB"):
            table_with_tokenizer(path)


def test_a_count_finished_elsewhere_is_cached_unless_the_cache_was_cleared_meanwhile(tmp_path: Path) -> None:
    """`Authorizer.begin` stops at the count (the service counts in a thread); `finish` ends and caches
    the decision `decide` makes inline, except after a clear (a policy or key change) since it began."""
    table = table_with_tokenizer(word_tokenizer(tmp_path / "tokenizer.json", ["hello", "world"]))
    authorizer = Authorizer(table)
    req = CheckInput(method="POST", path="/v1/chat/completions", headers={"x-api-key": API_KEY},
                     body=chat_body("hello world hello", max_tokens=3))  # fmt: skip
    step = authorizer.begin(req)
    assert isinstance(step, Counting) and step.count() == 3
    authorizer.cache.clear()
    decision = authorizer.finish(step, step.count())
    assert decision == decide(table, req) and decision.target is not None and decision.target.tokens == 6
    step = authorizer.begin(req)  # not cached: counted again
    assert isinstance(step, Counting)
    assert authorizer.finish(step, step.count()) == decision
    assert authorizer.begin(req) == (decision, True)  # cached now
