"""Incremental decoders for upstream SSE and NDJSON streams (D-HTTP-01, D-HTTP-02).

Both decoders buffer **bytes** and split only at ``\\n``. A newline byte never occurs inside a
multi-byte UTF-8 sequence, so every complete line is complete UTF-8 and a chunk boundary anywhere
(mid-field, mid-character, between ``\\r`` and ``\\n``) cannot change what is decoded.

Why not httpx-sse: its ``SSEDecoder`` works on already-decoded text lines, so correctness on split
UTF-8 would rest on httpx's line iterator and its incremental text decoder; this module keeps the
guarantee local, property-tested, and avoids building a ``str`` for the JSON payload at all
(``data`` stays ``bytes`` and goes straight to ``orjson.loads``).

The SSE decoder takes every line ending the SSE grammar allows: ``\\n``, ``\\r\\n`` and a lone
``\\r``. A chunk holding a ``\\r`` has its line endings rewritten to ``\\n`` as it enters (a
``\\r`` ending one chunk and the ``\\n`` starting the next are one ending); a chunk without one,
the usual case, costs the one scan for it and nothing more.

One event may hold at most ``MAX_EVENT_BYTES``: an engine that sends a line without end (or an
event without its blank line) fails the stream with ``EventTooLarge`` instead of filling memory.
The bytes of an unfinished line are kept as a list of pieces, joined once the line ends, so a
long line costs linear time, not a copy of everything so far per chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Final

#: The most bytes one event (its lines, before the blank line ending it) may hold. Engines' final
#: frames can echo the prompt (llama.cpp) or carry log-probabilities: generous, but bounded.
MAX_EVENT_BYTES: Final = 16 << 20


class EventTooLarge(ValueError):
    """An event grew past ``MAX_EVENT_BYTES`` without ending."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched SSE event; ``data`` is the joined ``data:`` lines, UTF-8 bytes."""

    data: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SseDecoder:
    """Feed raw body chunks in, get complete events out; comments and unknown fields are dropped.

    ``feed`` returns ``SseEvent`` objects; ``feed_data`` returns only each event's ``data``
    bytes, the hot path for engine streams, where event names carry nothing.
    """

    __slots__ = ("_buf", "_cr", "_data", "_event", "_held", "_id", "_retry")

    def __init__(self) -> None:
        #: Pieces of the line not yet ended by a newline, and their total size.
        self._buf: list[bytes] = []
        self._held = 0
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        #: The last chunk ended in ``\r``: a ``\n`` starting the next one completes that ending.
        self._cr = False

    @property
    def pending(self) -> bool:
        """True while bytes or fields of an unfinished event are held (a truncated frame at EOF)."""
        return bool(self._buf) or bool(self._data) or self._event is not None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        events: list[SseEvent] = []
        self._feed(chunk, events, None)
        return events

    def feed_data(self, chunk: bytes) -> list[bytes]:
        payloads: list[bytes] = []
        self._feed(chunk, None, payloads)
        return payloads

    def _feed(
        self, chunk: bytes, events: list[SseEvent] | None, payloads: list[bytes] | None
    ) -> None:
        if self._cr or b"\r" in chunk:  # one C-level scan keeps LF-only streams on the fast path
            chunk = self._newlines(chunk)
        whole = self._lines(chunk)
        if whole is None:
            return
        data, cut = whole
        pending = self._data
        # One C-level split per chunk; a newline byte never sits inside a UTF-8 sequence.
        for line in data[:cut].split(b"\n"):
            if not line:
                if pending:
                    value = pending[0] if len(pending) == 1 else b"\n".join(pending)
                    if payloads is not None:
                        payloads.append(value)
                    elif events is not None:
                        name = self._event or "message"
                        events.append(SseEvent(value, name, self._id, self._retry))
                    pending.clear()
                self._event = None
            elif line[:6] == b"data: ":
                pending.append(line[6:])
            elif line[:5] == b"data:":
                pending.append(line[5:])
            elif line[:1] != b":":
                self._field(line)
        if pending:  # an event spanning chunks (rare): many ``data:`` lines count too
            self._bound()

    def _newlines(self, chunk: bytes) -> bytes:
        """``chunk`` with its ``\\r\\n`` and lone ``\\r`` endings as ``\\n``."""
        if not chunk:
            return chunk
        if self._cr and chunk[0] == 0x0A:
            chunk = chunk[1:]
        self._cr = chunk[-1:] == b"\r"
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _lines(self, chunk: bytes) -> tuple[bytes, int] | None:
        """The held bytes and ``chunk`` with the offset of their last newline; None (``chunk``
        held) while no line ended."""
        cut = chunk.rfind(b"\n")
        if cut < 0:
            if chunk:
                self._held += len(chunk)
                self._bound()
                self._buf.append(chunk)
            return None
        data = chunk
        if self._buf:
            cut += self._held
            self._buf.append(chunk)
            data = b"".join(self._buf)
            self._buf.clear()
        rest = data[cut + 1 :]
        self._held = len(rest)
        if rest:
            self._buf.append(rest)
        return data, cut

    def _bound(self) -> None:
        if self._held + sum(map(len, self._data)) > MAX_EVENT_BYTES:
            raise EventTooLarge(f"an event grew past {MAX_EVENT_BYTES >> 20} MiB without ending")

    def _field(self, line: bytes) -> None:
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)


class NdjsonDecoder:
    """Feed raw chunks in, get complete non-blank lines (one JSON document each) out."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> bool:
        return bool(self._buf.strip())

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf
        start = len(buf)
        buf += chunk
        if buf.find(b"\n", start) < 0:
            return []
        cut = buf.rfind(b"\n") + 1
        lines = [line.rstrip(b"\r") for line in bytes(buf[:cut]).split(b"\n")]
        del buf[:cut]
        return [line for line in lines if line.strip()]

    def flush(self) -> list[bytes]:
        """At EOF a final line without a newline is still a complete document."""
        rest = bytes(self._buf).strip()
        self._buf.clear()
        return [rest] if rest else []


async def aiter_sse(chunks: AsyncIterable[bytes], decoder: SseDecoder) -> AsyncIterator[SseEvent]:
    """Decode a body as it arrives; the caller checks ``decoder.pending`` at EOF."""
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event


async def aiter_ndjson(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    decoder = NdjsonDecoder()
    async for chunk in chunks:
        for line in decoder.feed(chunk):
            yield line
    for line in decoder.flush():
        yield line
