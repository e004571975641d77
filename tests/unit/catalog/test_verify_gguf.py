"""Digests and GGUF metadata with the VRAM estimate, against hand-computed numbers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from llama_orch.catalog.gguf import OVERHEAD_BYTES, estimate_vram, is_gguf, read_gguf
from llama_orch.catalog.verify import Digest, VerifyResult, parse_digest, verify_digest
from llama_orch.errors import InvalidParams
from tests.support.gguf_files import tiny_llama_gguf


class TestDigest:
    def test_parse_normalizes_case_and_bare_hex(self) -> None:
        """sha256:<HEX> and bare hex parse to one lowercase Digest."""
        assert Digest("sha256", "ab" * 32) == parse_digest("AB" * 32)
        assert Digest("sha256", "ab" * 32) == parse_digest("sha256:" + "AB" * 32)
        with pytest.raises(InvalidParams):
            parse_digest("md5:abc")

    def test_verify_pass_fail_warn(self, tmp_path: Path) -> None:
        """A file verifies PASS against its sha256, FAIL against another, WARN with none."""
        path = tmp_path / "f"
        path.write_bytes(b"hello" * 100_000)
        good = Digest("sha256", hashlib.sha256(path.read_bytes()).hexdigest())
        assert (VerifyResult.PASS, good) == verify_digest(path, good)
        assert VerifyResult.FAIL == verify_digest(path, Digest("sha256", "0" * 64))[0]
        assert VerifyResult.WARN == verify_digest(path, None)[0]

    def test_directory_digest_depends_on_names_and_bytes(self, tmp_path: Path) -> None:
        """Renaming a file in a directory changes the directory's digest."""
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "a").write_bytes(b"1")
        before = verify_digest(tmp_path / "d", None)[1]
        (tmp_path / "d" / "a").rename(tmp_path / "d" / "b")
        assert before != verify_digest(tmp_path / "d", None)[1]


class TestGguf:
    def test_reads_header_fields(self, tmp_path: Path) -> None:
        """Architecture, sizes, file type and tensor totals come from the header."""
        info = read_gguf(tiny_llama_gguf(tmp_path / "m.gguf", tensor_elements=(1024, 4096)))
        assert ("llama", 256, 2, 64, 4, 2) == (
            info.architecture,
            info.context_length,
            info.block_count,
            info.embedding_length,
            info.head_count,
            info.head_count_kv,
        )
        assert ("ALL_F32", 5120, 5120 * 4) == (
            info.file_type,
            info.parameter_count,
            info.tensor_bytes,
        )

    def test_vram_estimate_matches_hand_computation(self, tmp_path: Path) -> None:
        """weights + ctx*slots*layers*kv_heads*(k+v)*2 bytes + the fixed overhead."""
        info = read_gguf(tiny_llama_gguf(tmp_path / "m.gguf"))
        estimate = estimate_vram(info, ctx=128, slots=3)
        # head_dim = 64 / 4 = 16; per token: 2 layers * 2 kv heads * (16 + 16) * 2 B = 256 B
        assert 128 * 3 * 256 == estimate.kv_bytes
        assert 20480 == estimate.weights_bytes
        assert 20480 + 98304 + OVERHEAD_BYTES == estimate.total_bytes
        assert 256 * 1 * 256 == estimate_vram(info, ctx=None, slots=1).kv_bytes

    def test_non_gguf_is_a_typed_error(self, tmp_path: Path) -> None:
        """A file that is not GGUF is reported by name, not as a crash."""
        path = tmp_path / "x.gguf"
        path.write_bytes(b"not gguf at all" * 10)
        assert not is_gguf(path)
        with pytest.raises(InvalidParams, match=r"x\.gguf"):
            read_gguf(path)

    def test_a_truncated_gguf_is_a_typed_error(self, tmp_path: Path) -> None:
        """A GGUF file cut short anywhere in its header or tables is reported by name, not
        as an IndexError (or other) crash inside the reader."""
        whole = tiny_llama_gguf(tmp_path / "whole.gguf").read_bytes()
        cut = tmp_path / "cut.gguf"
        for length in range(4, min(len(whole), 2048), 7):
            cut.write_bytes(whole[:length])
            try:
                read_gguf(cut)
            except InvalidParams as exc:
                assert "cut.gguf is not a readable GGUF file" in exc.message


def test_negative_header_counts_are_unknown_not_subtracted(tmp_path: Path) -> None:
    """A header whose counts are signed and negative (a lying or broken file) would make the
    KV estimate negative, so a pool that cannot fit would pass the VRAM check."""
    from gguf import GGUFWriter

    path = tmp_path / "liar.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_int32("llama.context_length", 4096)
    writer.add_int32("llama.block_count", 32)
    writer.add_int32("llama.embedding_length", 4096)
    writer.add_int32("llama.attention.head_count", 32)
    writer.add_int32("llama.attention.head_count_kv", -8)
    writer.add_float32("llama.attention.key_length", float("inf"))
    writer.add_float32("llama.attention.value_length", float("nan"))
    writer.add_tensor("blk.0.weight", np.zeros(16, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_gguf(path)
    assert (None, None, None) == (info.head_count_kv, info.key_length, info.value_length)
    estimate = estimate_vram(info, ctx=None, slots=1)
    assert estimate.kv_bytes == 32 * 32 * (128 + 128) * 2 * 4096
