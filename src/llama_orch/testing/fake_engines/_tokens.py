"""Deterministic simulated generation shared by every fake engine.

Output depends only on (prompt, seed, max tokens, stop): the same request always streams the same
tokens. ``temperature <= 0`` is greedy, so the seed stops mattering, as on real engines. The
vocabulary mixes ASCII with two-, three- and four-byte UTF-8 so that split frames really do split
characters.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

VOCAB = (
    "the",
    "GPU",
    "queue",
    "token",
    "stream",
    "model",
    "slot",
    "river",
    "stone",
    "light",
    "naïve",
    "café",
    "über",
    "日本",
    "語",
    "€",
    "🙂",
    "🚀",
    "and",
    "of",
    "runs",
    "waits",
)


@dataclass(frozen=True, slots=True)
class Generation:
    """The tokens a request produces and why it stopped: ``length``, ``stop`` or ``eos``."""

    tokens: tuple[str, ...]
    ids: tuple[int, ...]
    finish: str
    stopping_word: str = ""


def prompt_tokens(prompt: str) -> int:
    """A stable stand-in for tokenization: about four bytes per token, at least one."""
    return max(1, len(prompt.encode()) // 4)


def generate(
    prompt: str,
    seed: int | None,
    max_tokens: int,
    *,
    temperature: float | None = None,
    stop: tuple[str, ...] = (),
    eos_at: int | None = None,
) -> Generation:
    greedy = temperature is not None and temperature <= 0
    key = f"{prompt}\x1f{0 if greedy or seed is None else seed}".encode()
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
    stops = tuple(s for s in stop if s)
    # A new match must overlap the new piece, so only the last (longest stop - 1) characters of
    # the text so far need keeping: long generations stay linear.
    keep = max((len(s) for s in stops), default=1) - 1
    pieces = [" " + word for word in VOCAB]
    tokens: list[str] = []
    ids: list[int] = []
    tail = ""
    for i in range(max_tokens):
        if eos_at is not None and i >= eos_at:
            return Generation(tuple(tokens), tuple(ids), "eos")
        index = rng.randrange(len(VOCAB))
        piece = VOCAB[index] if i == 0 else pieces[index]
        if stops:
            window = tail + piece
            hit = next((s for s in stops if s in window), None)
            if hit is not None:
                # The matched text is never emitted; what precedes it in this token still is.
                head = window[: window.index(hit)][len(tail) :]
                if head:
                    tokens.append(head)
                    ids.append(100 + index)
                return Generation(tuple(tokens), tuple(ids), "stop", hit)
            tail = window[-keep:] if keep else ""
        tokens.append(piece)
        ids.append(100 + index)
    return Generation(tuple(tokens), tuple(ids), "length")
