"""The pure parts of the embedding workloads: batching, shortening, base64, hashed vectors, and
placement's workload filter."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from llama_orch.core.embedding import (
    batches,
    decode_base64,
    encode_base64,
    hashed_vector,
    shorten,
    similarity_score,
)
from llama_orch.vocab import Workload
from tests.unit.core.test_placement import assigned, place, pool, replica


@given(st.integers(0, 500), st.integers(1, 64))
def test_batches_cover_every_input_once_in_order(count: int, size: int) -> None:
    parts = batches(count, size)
    assert list(range(count)) == [i for part in parts for i in part]
    assert all(1 <= len(part) <= size for part in parts)


def test_base64_is_little_endian_float32() -> None:
    """The OpenAI example: [1.0, -2.0] is 00 00 80 3f 00 00 00 c0."""
    assert "AACAPwAAAMA=" == encode_base64([1.0, -2.0])
    assert (1.0, -2.0) == decode_base64("AACAPwAAAMA=")


def test_hashed_vectors_are_unit_length_deterministic_and_float32_exact() -> None:
    a = hashed_vector("m", "text", 32)
    assert a == hashed_vector("m", "text", 32)
    assert a != hashed_vector("m", "other", 32)
    assert a != hashed_vector("m2", "text", 32)
    assert math.isclose(1.0, math.fsum(x * x for x in a), rel_tol=1e-6)
    assert a == decode_base64(encode_base64(a))


def test_shorten_keeps_the_head_and_normalises() -> None:
    vector = hashed_vector("m", "t", 32)
    short = shorten(vector, 4)
    assert 4 == len(short)
    # Unit length to float32 precision, and float32 exact (the base64 form holds the same).
    assert math.isclose(1.0, math.fsum(x * x for x in short), rel_tol=1e-6)
    assert tuple(short) == decode_base64(encode_base64(short))
    assert vector is shorten(vector, None) and vector is shorten(vector, 64)


def test_similarity_is_within_zero_and_one() -> None:
    q = hashed_vector("m", "q", 16)
    assert 1.0 == similarity_score(q, q)
    assert 0.0 <= similarity_score(q, hashed_vector("m", "d", 16)) <= 1.0


def test_placement_keeps_only_pools_serving_the_workload() -> None:
    chat = pool("chat", replica("chat"))
    embed = pool("embed", replica("embed"), workloads=(Workload.EMBEDDING, Workload.COMPLETION))
    decision = place(chat, embed, workload=Workload.EMBEDDING)
    assert "embed" == assigned(decision)[0]
    assert "workload 1/2" in decision.log.filters_applied
