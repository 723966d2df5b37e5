"""A tiny llama-architecture model in GGUF, written here in well under a second, for a real llama.cpp server.

No model hub is reachable from this project's machines, so the model is built, not downloaded: random
weights from a fixed seed (the same file every time), one transformer block, and a SentencePiece-style
vocabulary (`tokenizer.ggml.model = "llama"`) of control tokens, the 256 byte-fallback tokens (any text
tokenizes), single characters and the words of the Zen of Python. The output rows of the control and
byte tokens are zero, so greedy decoding (temperature 0) picks a word or character token and never the
end-of-sequence token: a completion runs to `max_tokens` and its text is valid UTF-8.

It says nothing sensible; what the tests need is a real server's tokenizer, chat template, usage
accounting and wire format (JSON and SSE). Written with the `gguf` package (llama.cpp's own writer).
"""

from __future__ import annotations

import string
from pathlib import Path

import gguf
import numpy as np

__all__ = ["CHAT_TEMPLATE", "write_tiny_llama"]

ZEN = """Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.
Complex is better than complicated. Flat is better than nested. Sparse is better than dense.
Readability counts. Special cases aren't special enough to break the rules. Although practicality beats
purity. Errors should never pass silently. Unless explicitly silenced. In the face of ambiguity, refuse
the temptation to guess. There should be one and preferably only one obvious way to do it. Now is better
than never. If the implementation is hard to explain, it's a bad idea. Namespaces are one honking great
idea, let's do more of those!"""

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
"""A plain role-prefixed template (llama-cpp-python reads `tokenizer.chat_template` from the file)."""

_SPACE = "\u2581"  # SentencePiece's word-boundary mark
_EMBED, _HEADS, _FF, _CONTEXT = 64, 4, 128, 2048


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = [_SPACE, *string.ascii_letters, *string.digits, *string.punctuation]
    words = sorted({w.strip(string.punctuation) for w in ZEN.split()} - {""})
    pieces += [_SPACE + w for w in words]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # SentencePiece merges the highest-scoring pair first: longer pieces score higher
    scores = [0.0] * (3 + 256) + [float(len(p)) for p in pieces]
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(path: Path, *, seed: int = 1234) -> Path:
    """Write the model to `path` (deterministic for a given seed) and return the path."""
    tokens, scores, types = _vocabulary()
    rng = np.random.default_rng(seed)

    def weights(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("meshgate-tiny-llama")
    writer.add_context_length(_CONTEXT)
    writer.add_embedding_length(_EMBED)
    writer.add_block_count(1)
    writer.add_feed_forward_length(_FF)
    writer.add_head_count(_HEADS)
    writer.add_head_count_kv(_HEADS)
    writer.add_rope_dimension_count(_EMBED // _HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)  # the chat template writes it
    writer.add_chat_template(CHAT_TEMPLATE)

    output = weights(len(tokens), _EMBED, scale=1.0)
    output[: 3 + 256] = 0.0  # never generated: control and byte tokens (see the module's docstring)
    writer.add_tensor("token_embd.weight", weights(len(tokens), _EMBED, scale=1.0))
    writer.add_tensor("output_norm.weight", np.ones(_EMBED, dtype=np.float32))
    writer.add_tensor("output.weight", output)
    block = {
        "attn_norm": np.ones(_EMBED, dtype=np.float32),
        "attn_q": weights(_EMBED, _EMBED),
        "attn_k": weights(_EMBED, _EMBED),
        "attn_v": weights(_EMBED, _EMBED),
        "attn_output": weights(_EMBED, _EMBED),
        "ffn_norm": np.ones(_EMBED, dtype=np.float32),
        "ffn_gate": weights(_FF, _EMBED),
        "ffn_up": weights(_FF, _EMBED),
        "ffn_down": weights(_EMBED, _FF),
    }
    for name, tensor in block.items():
        writer.add_tensor(f"blk.0.{name}.weight", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
