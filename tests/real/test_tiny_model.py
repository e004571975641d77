"""The tiny GGUF of the real llama.cpp run: reproducible bytes and the metadata llama.cpp needs
(runs in every ``make test``; loading it in llama-server is ``make test-real``'s job)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader

from tests.real.tiny_model import MERGES, byte_symbols, vocabulary, write_tiny_llama


def _field(reader: GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def test_the_same_bytes_every_time(tmp_path: Path) -> None:
    """Weights come from a fixed seed: two writes give identical files, and no staging file
    is left behind."""
    a = write_tiny_llama(tmp_path / "a" / "tiny.gguf").read_bytes()
    b = write_tiny_llama(tmp_path / "b" / "tiny.gguf").read_bytes()
    assert a == b
    assert ["tiny.gguf"] == [p.name for p in (tmp_path / "a").iterdir()]


def test_llama_metadata_and_byte_level_vocabulary(tmp_path: Path) -> None:
    reader = GGUFReader(write_tiny_llama(tmp_path / "tiny.gguf"))
    tokens, _, _ = vocabulary()
    assert "llama" == _field(reader, "general.architecture")
    assert ("gpt2", "gpt-2") == (
        _field(reader, "tokenizer.ggml.model"),
        _field(reader, "tokenizer.ggml.pre"),
    )
    assert tokens == _field(reader, "tokenizer.ggml.tokens")
    assert list(MERGES) == _field(reader, "tokenizer.ggml.merges")
    assert (len(tokens) - 2, len(tokens) - 1) == (
        _field(reader, "tokenizer.ggml.bos_token_id"),
        _field(reader, "tokenizer.ggml.eos_token_id"),
    )
    # Every merge joins two tokens into one that is itself in the vocabulary.
    for merge in MERGES:
        left, right = merge.split(" ")
        assert {left, right, left + right} <= set(tokens)
    assert 256 == len(set(byte_symbols()))


def test_only_printable_ascii_can_be_sampled(tmp_path: Path) -> None:
    """The output rows of EOS, control and non-ASCII tokens lean against the hidden state's
    constant direction, so their logits sit far below every printable token's."""
    reader = GGUFReader(write_tiny_llama(tmp_path / "tiny.gguf"))
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    _, _, sampleable = vocabulary()
    output = tensors["output.weight"]
    assert (len(sampleable), 64) == output.shape
    assert (output[~np.asarray(sampleable), 0] < -10).all()
    assert (output[np.asarray(sampleable), 0] == 0).all()
    assert (tensors["token_embd.weight"][:, 0] > 0).all()
