"""Pure helpers of the embedding and rerank workloads: batching, vector shaping, encodings.

The simulated engines (the in-process mock and the fake engines the tests run) draw their
vectors from ``hashed_vector``, so the same text gives the same bytes on every replica.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Sequence

from llama_orch.core.guardrails import estimate_prompt_tokens


def batches(count: int, size: int) -> list[range]:
    """Index ranges of ``count`` inputs cut into engine calls of at most ``size``, in order."""
    return [range(start, min(count, start + size)) for start in range(0, count, size)]


def l2_normalize(vector: Sequence[float]) -> tuple[float, ...]:
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if norm == 0:
        return tuple(vector)
    return tuple(x / norm for x in vector)


def shorten(vector: Sequence[float], dimensions: int | None) -> Sequence[float]:
    """The first ``dimensions`` values, normalised again (how Matryoshka models shorten), as
    float32 values: the float list then carries the numbers the base64 form does."""
    if dimensions is None or dimensions >= len(vector):
        return vector
    return float32(l2_normalize(vector[:dimensions]))


def hashed_vector(model: str, text: str, dims: int) -> tuple[float, ...]:
    """A simulated embedding: unit length, seeded by the model and the text only."""
    raw = hashlib.shake_256(f"{model}\x1f{text}".encode()).digest(4 * dims)
    values = [x / 2**31 - 1.0 for x in struct.unpack(f"<{dims}I", raw)]
    # Rounded through float32 so the float list and the base64 form carry the same values.
    return float32(l2_normalize(values))


def float32(vector: Sequence[float]) -> tuple[float, ...]:
    return struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector))


def similarity_score(query: Sequence[float], document: Sequence[float]) -> float:
    """A simulated relevance in [0, 1]: the cosine of two unit vectors, moved to 0..1."""
    cosine = math.fsum(a * b for a, b in zip(query, document, strict=False))
    return round((1.0 + cosine) / 2.0, 6)


def encode_base64(vector: Sequence[float]) -> str:
    """Little-endian IEEE-754 float32, 4 bytes a dimension, padded base64 (the OpenAI form)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def decode_base64(text: str) -> tuple[float, ...]:
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError(f"base64 embedding of {len(raw)} bytes is no float32 array")
    return struct.unpack(f"<{len(raw) // 4}f", raw)


def estimate_tokens(text: str) -> int:
    """Input tokens of one text, estimated as the prompt guardrail estimates a prompt's."""
    return max(1, estimate_prompt_tokens(len(text.encode())))
