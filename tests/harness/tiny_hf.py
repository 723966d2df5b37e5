"""A tiny Llama model in Hugging Face's layout, written here in a fraction of a second, for `transformers
serve` (a real OpenAI-compatible server from the `transformers` package).

No model hub is reachable from this project's machines, so the model is built, not downloaded, and
without torch: `config.json` (LlamaForCausalLM), `model.safetensors` written from NumPy arrays (random
weights from a fixed seed: the same files every time), and a word-level `tokenizer.json` from the
`tokenizers` library over the words of the Zen of Python (any other word is `<unk>`), with a chat
template. The output rows of the special tokens are zero, so greedy decoding picks a word and never the
end-of-sequence token: every completion runs to `max_tokens`. It says nothing sensible; the tests need a
real server's tokenizer, chat template, usage accounting and wire format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.harness.tiny_gguf import ZEN

__all__ = ["write_tiny_hf_llama"]

_SPECIAL = ["<unk>", "<s>", "</s>"]
_HIDDEN, _HEADS, _FF = 32, 2, 64
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _tokenizer(directory: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # a dependency of meshgate itself

    words = sorted({w.strip(".,!") for w in ZEN.split()} - {""})
    vocab = {token: i for i, token in enumerate([*_SPECIAL, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece()  # joins the words with spaces
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "chat_template": CHAT_TEMPLATE, "model_max_length": 512}  # fmt: skip
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return len(vocab)


def write_tiny_hf_llama(directory: Path, *, seed: int = 1234) -> Path:
    """Write the model into `directory` (created; deterministic for a given seed) and return it."""
    from safetensors.numpy import save_file  # installed with transformers, as the server needs it

    directory.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(directory)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": _HIDDEN, "intermediate_size": _FF, "num_hidden_layers": 1,
        "num_attention_heads": _HEADS, "num_key_value_heads": _HEADS, "head_dim": _HIDDEN // _HEADS,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False, "dtype": "float32",
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    rng = np.random.default_rng(seed)

    def weights(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    head = weights(vocab, _HIDDEN, scale=1.0)
    head[: len(_SPECIAL)] = 0.0  # never generated (see the module's docstring)
    layer = "model.layers.0."
    tensors = {
        "model.embed_tokens.weight": weights(vocab, _HIDDEN, scale=1.0),
        "model.norm.weight": np.ones(_HIDDEN, dtype=np.float32),
        "lm_head.weight": head,
        layer + "input_layernorm.weight": np.ones(_HIDDEN, dtype=np.float32),
        layer + "post_attention_layernorm.weight": np.ones(_HIDDEN, dtype=np.float32),
        **{f"{layer}self_attn.{p}_proj.weight": weights(_HIDDEN, _HIDDEN) for p in "qkvo"},
        layer + "mlp.gate_proj.weight": weights(_FF, _HIDDEN),
        layer + "mlp.up_proj.weight": weights(_FF, _HIDDEN),
        layer + "mlp.down_proj.weight": weights(_HIDDEN, _FF),
    }
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
