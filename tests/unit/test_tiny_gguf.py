"""The tiny GGUF model the real-server e2e tests serve (tests/harness/tiny_gguf.py), read back with the
`gguf` package's reader: what llama.cpp will load must be what the tests assume."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from tests.harness.tiny_gguf import CHAT_TEMPLATE, write_tiny_llama

CONTROL_AND_BYTES = 3 + 256


def test_the_model_is_the_same_file_every_time(tmp_path: Path) -> None:
    first = write_tiny_llama(tmp_path / "a.gguf").read_bytes()
    assert first == write_tiny_llama(tmp_path / "b.gguf").read_bytes()
    assert first != write_tiny_llama(tmp_path / "c.gguf", seed=7).read_bytes()


def test_a_llama_model_with_a_sentencepiece_vocabulary_and_a_chat_template(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(write_tiny_llama(tmp_path / "m.gguf"))
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert fields["tokenizer.chat_template"].contents() == CHAT_TEMPLATE
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and fields["tokenizer.ggml.eos_token_id"].contents() == 2
    # byte fallback: every byte has its token, so any text tokenizes
    assert tokens[3:CONTROL_AND_BYTES] == [f"<0x{b:02X}>" for b in range(256)]
    assert set(types[3:CONTROL_AND_BYTES]) == {gguf.TokenType.BYTE}
    assert len(set(tokens)) == len(tokens)
    assert "\u2581Beautiful" in tokens

    by_name = {t.name: t for t in reader.tensors}
    output = np.asarray(by_name["output.weight"].data)
    assert output.shape == (len(tokens), 64)
    # greedy decoding never picks a control or byte token (their logits are 0, the words' are not)
    assert not output[:CONTROL_AND_BYTES].any() and output[CONTROL_AND_BYTES:].any()
    assert {f"blk.0.{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "ffn_down")} <= set(by_name)
