"""The upstream stream decoders give the same events however the bytes are split (D-HTTP-02)."""

from __future__ import annotations

import pytest
from hypothesis import given

from llama_orch.adapters._sse import (
    MAX_EVENT_BYTES,
    EventTooLarge,
    NdjsonDecoder,
    SseDecoder,
    SseEvent,
)
from tests.property.sse_strategies import Frame, ndjson_byte_splits, sse_byte_splits


def decode(chunks: list[bytes]) -> tuple[list[SseEvent], bool]:
    decoder = SseDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events, decoder.pending


class TestSseDecoderSplits:
    @given(sse_byte_splits())
    def test_any_split_decodes_like_the_whole(self, case: tuple[list[Frame], list[bytes]]) -> None:
        """Splitting the stream at arbitrary bytes, even inside a character, changes nothing."""
        _, chunks = case
        assert decode([b"".join(chunks)]) == decode(chunks)

    @given(sse_byte_splits())
    def test_events_match_what_the_engine_sent(self, case: tuple[list[Frame], list[bytes]]) -> None:
        """Each data frame comes back with exactly its payload bytes and event name, in order."""
        frames, chunks = case
        events, pending = decode(chunks)
        expected = [(f.data, f.event) for f in frames if f.data is not None]
        assert (expected, False) == ([(e.data, e.event) for e in events], pending)

    @given(sse_byte_splits())
    def test_payloads_are_valid_utf8(self, case: tuple[list[Frame], list[bytes]]) -> None:
        """No payload ever ends or starts in the middle of a UTF-8 sequence."""
        _, chunks = case
        events, _ = decode(chunks)
        for event in events:
            event.data.decode("utf-8")

    @given(sse_byte_splits())
    def test_data_fast_path_agrees(self, case: tuple[list[Frame], list[bytes]]) -> None:
        """``feed_data`` (the adapters' hot path) yields exactly the events' data, any split."""
        _, chunks = case
        events, pending = decode(chunks)
        decoder = SseDecoder()
        payloads = [data for chunk in chunks for data in decoder.feed_data(chunk)]
        assert ([e.data for e in events], pending) == (payloads, decoder.pending)


class TestSseLineEndings:
    def test_a_crlf_split_across_two_reads_is_one_ending(self) -> None:
        """A read ending in ``\\r`` whose next read starts with ``\\n``: one line ending, so the
        two data lines stay one event."""
        decoder = SseDecoder()
        reads = [b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]
        assert [[], [], [b"a\nb"], []] == [decoder.feed_data(read) for read in reads]
        assert not decoder.pending

    def test_lone_cr_endings(self) -> None:
        """A lone ``\\r`` ends a line, at a read's end or inside it."""
        decoder = SseDecoder()
        assert [] == decoder.feed(b"event: token\rdata: 1\r")
        assert [SseEvent(b"1", "token")] == decoder.feed(b"\r")
        assert [b"2", b"3"] == decoder.feed_data(b"data: 2\r\rdata: 3\r\r")
        assert not decoder.pending

    def test_an_empty_read_keeps_a_pending_cr(self) -> None:
        """An empty read between ``\\r`` and ``\\n`` changes nothing."""
        decoder = SseDecoder()
        reads = [b"data: a\r", b"", b"\ndata: b\r\n", b"\r\n"]
        assert [b"a\nb"] == [data for read in reads for data in decoder.feed_data(read)]


class TestSseDecoderBounds:
    PIECE = 1 << 16

    def test_a_line_without_end_fails_past_the_bound(self) -> None:
        decoder = SseDecoder()
        decoder.feed(b"data: {")
        with pytest.raises(EventTooLarge, match="without ending"):
            for _ in range(MAX_EVENT_BYTES // self.PIECE + 1):
                decoder.feed(b"x" * self.PIECE)

    def test_data_lines_without_the_blank_line_fail_past_the_bound(self) -> None:
        decoder = SseDecoder()
        line = b"data: " + b"x" * self.PIECE + b"\n"
        with pytest.raises(EventTooLarge):
            for _ in range(MAX_EVENT_BYTES // self.PIECE + 1):
                decoder.feed(line)

    def test_a_long_line_in_many_pieces_decodes_whole(self) -> None:
        """A line of several MiB (under the bound) split into many chunks is one event."""
        decoder = SseDecoder()
        payload = b"y" * (MAX_EVENT_BYTES // 2)
        stream = b"data: " + payload + b"\r\n\r\ndata: [DONE]\n\n"
        events = []
        for start in range(0, len(stream), self.PIECE - 1):
            events += decoder.feed_data(stream[start : start + self.PIECE - 1])
        assert [payload, b"[DONE]"] == events
        assert not decoder.pending


class TestNdjsonDecoderSplits:
    @given(ndjson_byte_splits())
    def test_any_split_gives_the_documents(self, case: tuple[list[bytes], list[bytes]]) -> None:
        """Every JSON line comes back whole, whatever the chunking and line ending."""
        docs, chunks = case
        decoder = NdjsonDecoder()
        lines = [line for chunk in chunks for line in decoder.feed(chunk)] + decoder.flush()
        assert docs == lines
