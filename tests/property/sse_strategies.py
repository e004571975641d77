"""Hypothesis strategies for upstream streams: real engine-shaped frames and byte splits."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import orjson
from hypothesis import strategies as st

# Text with one- to four-byte UTF-8 characters, so splits land inside characters.
token_text = st.text(
    alphabet=st.sampled_from([*'ab \n:{}"\\é日🙂€ü', "\u2028", "\x00"]), max_size=12
)


@dataclass(frozen=True)
class Frame:
    """One SSE event as an engine writes it, and the data the decoder must hand back."""

    raw: bytes
    data: bytes | None
    event: str


@st.composite
def sse_frames(draw: st.DrawFn) -> Frame:
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    space = draw(st.sampled_from([b" ", b""]))  # TGI writes data:{...}, the others data: {...}
    kind = draw(st.sampled_from(["token", "comment", "multiline", "named", "done"]))
    if kind == "comment":
        return Frame(b":" + newline + newline, None, "")
    if kind == "done":
        return Frame(b"data:" + space + b"[DONE]" + newline + newline, b"[DONE]", "message")
    payload = orjson.dumps({"content": draw(token_text), "index": draw(st.integers(0, 10**6))})
    if kind == "multiline":
        second = orjson.dumps({"more": draw(token_text)})
        raw = b"data:" + space + payload + newline + b"data:" + space + second + newline + newline
        return Frame(raw, payload + b"\n" + second, "message")
    if kind == "named":
        raw = b"event: token" + newline + b"id: 7" + newline + b"data:" + space + payload
        return Frame(raw + newline + newline, payload, "token")
    return Frame(b"data:" + space + payload + newline + newline, payload, "message")


@st.composite
def sse_byte_splits(draw: st.DrawFn) -> tuple[list[Frame], list[bytes]]:
    """Real frames, and the same bytes cut into chunks at arbitrary byte offsets."""
    frames = draw(st.lists(sse_frames(), min_size=1, max_size=12))
    stream = b"".join(frame.raw for frame in frames)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=40)))
    bounds = [0, *[c for c in cuts if c < len(stream)], len(stream)]
    return frames, [stream[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def ndjson_byte_splits(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    docs = [
        orjson.dumps({"token": {"text": draw(token_text)}, "i": i})
        for i in range(draw(st.integers(1, 10)))
    ]
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    stream = newline.join(docs) + draw(st.sampled_from([newline, b""]))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=30)))
    bounds = [0, *[c for c in cuts if c < len(stream)], len(stream)]
    return docs, [stream[a:b] for a, b in itertools.pairwise(bounds)]
