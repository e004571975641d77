"""A tiny llama-architecture GGUF that a real ``llama-server`` loads, written by ``gguf``.

Two blocks, 64-wide embeddings, 4 heads (2 KV heads), f32 weights drawn from a fixed seed, so
the file's bytes (and its sha256) are the same on every machine. The tokenizer is byte-level
GPT-2 BPE: the 256 byte tokens, a few merges, and BOS/EOS control tokens.

Only printable ASCII tokens can be sampled: every other output row (EOS, control characters,
bytes above 0x7f) points against a direction the final hidden state always has, so its logit
is far below the rest. Generations are therefore readable text that always runs to
``max_tokens`` (``stop_type: limit``), which keeps cancel and stream-length checks exact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType

SEED = 20260
BLOCKS = 2
EMBED = 64
HEADS = 4
KV_HEADS = 2
FFN = 128
#: Long enough that a task canceled after its first token is still decoding.
CONTEXT = 16384
#: Adjacent pairs merged into one token; each pair's parts are already tokens.
MERGES = ("Ġ t", "h e", "Ġ a", "i n", "e r", "o n", "Ġt he", "r e", "a t", "e n")
#: How far the hidden state leans along dimension 0, and how hard unsampleable rows push back.
_LEAN = 4.0
_PUSH = 20.0


def byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode table: printable bytes stand for themselves, the rest shift."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shifted)
            shifted += 1
    return [symbols[b] for b in range(256)]


def vocabulary() -> tuple[list[str], list[int], list[bool]]:
    """Tokens, their GGUF token types, and whether each may be sampled."""
    symbols = byte_symbols()
    tokens = list(symbols)
    sampleable = [0x20 <= b <= 0x7E for b in range(256)]
    for merge in MERGES:
        tokens.append(merge.replace(" ", ""))
        sampleable.append(True)
    types = [int(TokenType.NORMAL)] * len(tokens)
    tokens += ["<|bos|>", "<|eos|>"]
    types += [int(TokenType.CONTROL)] * 2
    sampleable += [False, False]
    return tokens, types, sampleable


def _tensors(vocab: int, sampleable: list[bool]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)

    def weights(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    embed = weights(vocab, EMBED, scale=1.0)
    embed[:, 0] = _LEAN  # every token leans the same way along dimension 0
    output = weights(vocab, EMBED, scale=1.0)
    output[:, 0] = 0.0
    output[~np.asarray(sampleable), 0] = -_PUSH
    kv = EMBED // HEADS * KV_HEADS
    ones = np.ones(EMBED, dtype=np.float32)
    tensors = {"token_embd.weight": embed}
    for i in range(BLOCKS):
        tensors |= {
            f"blk.{i}.attn_norm.weight": ones,
            f"blk.{i}.attn_q.weight": weights(EMBED, EMBED),
            f"blk.{i}.attn_k.weight": weights(kv, EMBED),
            f"blk.{i}.attn_v.weight": weights(kv, EMBED),
            f"blk.{i}.attn_output.weight": weights(EMBED, EMBED),
            f"blk.{i}.ffn_norm.weight": ones,
            f"blk.{i}.ffn_gate.weight": weights(FFN, EMBED),
            f"blk.{i}.ffn_up.weight": weights(FFN, EMBED),
            f"blk.{i}.ffn_down.weight": weights(EMBED, FFN),
        }
    tensors |= {"output_norm.weight": ones, "output.weight": output}
    return tensors


def write_tiny_llama(path: Path) -> Path:
    """Write the model to ``path`` atomically (a temporary file in its directory, renamed)."""
    tokens, types, sampleable = vocabulary()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=".tiny-", suffix=".gguf", dir=path.parent)
    os.close(fd)
    try:
        writer = GGUFWriter(staging, "llama")
        writer.add_name("llorch-tiny-llama")
        writer.add_context_length(CONTEXT)
        writer.add_embedding_length(EMBED)
        writer.add_block_count(BLOCKS)
        writer.add_feed_forward_length(FFN)
        writer.add_head_count(HEADS)
        writer.add_head_count_kv(KV_HEADS)
        writer.add_rope_dimension_count(EMBED // HEADS)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(len(tokens))
        writer.add_file_type(LlamaFileType.ALL_F32)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(list(MERGES))
        writer.add_bos_token_id(len(tokens) - 2)
        writer.add_eos_token_id(len(tokens) - 1)
        writer.add_add_bos_token(True)
        for name, tensor in _tensors(len(tokens), sampleable).items():
            writer.add_tensor(name, tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(staging, 0o644)
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)
    return path
