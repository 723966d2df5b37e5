"""The tiny Hugging Face model `transformers serve` serves in the real-server e2e tests
(tests/harness/tiny_hf.py), read back without torch: what the server loads must be what the tests assume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from tests.harness.tiny_hf import CHAT_TEMPLATE, write_tiny_hf_llama

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def test_the_model_is_the_same_files_every_time(tmp_path: Path) -> None:
    first, second = (write_tiny_hf_llama(tmp_path / name) for name in "ab")
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in FILES)
    other = write_tiny_hf_llama(tmp_path / "c", seed=7)
    assert (other / "model.safetensors").read_bytes() != (first / "model.safetensors").read_bytes()


def test_a_llama_model_with_a_word_tokenizer_and_a_chat_template(tmp_path: Path) -> None:
    model = write_tiny_hf_llama(tmp_path / "zen-chat")
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["eos_token_id"] == 2
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == config["vocab_size"]
    assert tokenizer.token_to_id("</s>") == 2
    encoded = tokenizer.encode("Beautiful is better than ugly")
    assert tokenizer.token_to_id("<unk>") not in encoded.ids
    assert tokenizer.decode(encoded.ids) == "Beautiful is better than ugly"
    assert json.loads((model / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE

    tensors = load_file(str(model / "model.safetensors"))
    head = tensors["lm_head.weight"]
    assert head.shape == (config["vocab_size"], config["hidden_size"])
    # greedy decoding never picks <unk>, <s> or </s>: their logits are 0, the words' are not
    assert not head[:3].any() and np.count_nonzero(head[3:]) == head[3:].size
    assert tensors["model.layers.0.self_attn.q_proj.weight"].shape == (32, 32)
