"""Tiny GGUF files with known metadata, written by the ``gguf`` package (fixture factories)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType


def tiny_llama_gguf(
    path: Path,
    *,
    blocks: int = 2,
    embedding: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    context: int = 256,
    tensor_elements: tuple[int, ...] = (1024, 4096),
) -> Path:
    """A llama-architecture GGUF whose tensors are f32 zeros of the given element counts."""
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test")
    writer.add_context_length(context)
    writer.add_block_count(blocks)
    writer.add_embedding_length(embedding)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_file_type(LlamaFileType.ALL_F32)
    for index, count in enumerate(tensor_elements):
        writer.add_tensor(f"blk.{index}.weight", np.zeros(count, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
