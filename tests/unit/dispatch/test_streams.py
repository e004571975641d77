from __future__ import annotations

import asyncio

import orjson
import pytest

from llama_orch.dispatch.streams import TaskStream


class TestTaskStream:
    async def test_late_subscriber_replays_everything(self) -> None:
        """A subscriber arriving after the end reads the whole transcript."""
        stream = TaskStream()
        stream.publish_tokens(["a"])
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 1})))
        frames = [event async for event, _ in stream.follow()]
        assert ["token", "end"] == frames

    async def test_live_subscriber_is_woken(self) -> None:
        """A waiting subscriber receives frames published later, in order."""
        stream = TaskStream()
        received: list[str] = []

        async def read() -> None:
            async for event, _ in stream.follow():
                received.append(event)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0)
        for _ in range(3):
            stream.publish_tokens(["x"])
            await asyncio.sleep(0)
        stream.publish_frame(("end", orjson.dumps({})))
        await reader
        assert ["token", "token", "token", "end"] == received

    def test_a_batch_of_tokens_keeps_order_and_indices(self) -> None:
        """publish_tokens appends in order; indices continue across single and batched tokens."""
        stream = TaskStream()
        stream.publish_tokens(["a"])
        stream.publish_tokens(["b", "c"])
        stream.publish_tokens([])
        stream.publish_tokens(["d"])
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 4})))
        tokens = [orjson.loads(data) for event, data in stream.frames() if event == "token"]
        assert [{"t": t, "i": i} for i, t in enumerate("abcd")] == tokens
        assert 4 == stream.tokens
        with pytest.raises(RuntimeError):
            stream.publish_tokens(["late"])

    def test_nothing_follows_a_terminal_frame(self) -> None:
        """Publishing after the terminal frame is a bug and is refused."""
        stream = TaskStream()
        stream.publish_frame(("error", orjson.dumps({"code": "INTERNAL"})))
        with pytest.raises(RuntimeError):
            stream.publish_tokens(["late"])

    async def test_one_subscriber_leaving_does_not_break_another(self) -> None:
        """Cancelling one follower leaves the others waiting."""
        stream = TaskStream()
        first = asyncio.create_task(anext(stream.follow()))
        second = asyncio.create_task(anext(stream.follow()))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        stream.publish_tokens(["a"])
        assert "token" == (await second)[0]


class TestTranscriptShape:
    def test_tokens_are_stored_as_text_and_framed_on_read(self) -> None:
        """A token costs its text; frames() rebuilds the {t, i} JSON frames in order."""
        stream = TaskStream()
        stream.publish_tokens(["a"])
        stream.publish_frame(("metrics", orjson.dumps({"queue_depth": 0})))
        stream.publish_tokens(["b"])
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 2})))
        assert ["a", "b"] == [e for e in stream.entries if isinstance(e, str)]
        assert [
            ("token", b'{"t":"a","i":0}'),
            ("metrics", b'{"queue_depth":0}'),
            ("token", b'{"t":"b","i":1}'),
            ("end", b'{"tokens_out":2}'),
        ] == stream.frames()
        assert (2, True) == (stream.tokens, stream.closed)

    def test_sse_is_the_frames_encoded_as_a_subscriber_reads_them(self) -> None:
        """sse() (the stream trace) is every frame as SSE text, one token per frame."""
        stream = TaskStream()
        stream.publish_frame(("started", b'{"queue_position":0}'))
        stream.publish_tokens(["a", 'q"\n'])
        stream.publish_frame(("end", b'{"tokens_out":2}'))
        expected = "".join(f"event: {e}\ndata: {d.decode()}\n\n" for e, d in stream.frames())
        assert expected.encode() == stream.sse()
        assert b'data: {"t":"q\\"\\n","i":1}' in stream.sse()

    def test_one_subscriber_at_a_time(self) -> None:
        """subscribe claims the stream once; unsubscribe gives it back."""
        stream = TaskStream()
        assert (True, False) == (stream.subscribe(), stream.subscribe())
        stream.unsubscribe()
        assert True is stream.subscribe()

    def test_nbytes_grows_with_the_transcript(self) -> None:
        """The retention bound sees the transcript's size, tokens included."""
        stream = TaskStream()
        before = stream.nbytes
        stream.publish_tokens(["hello"])
        middle = stream.nbytes
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 1})))
        assert before < middle < stream.nbytes


class TestWait:
    async def test_wait_times_out_without_frames(self) -> None:
        """wait() with a limit returns False when nothing arrives, and leaves no waiter."""
        stream = TaskStream()
        assert False is await stream.wait(0, 0.01)
        stream.publish_tokens(["a"])
        assert True is await stream.wait(0, 0.01)

    async def test_wait_wakes_on_publish_and_on_close(self) -> None:
        """A waiter wakes for a new frame, and for the terminal frame."""
        stream = TaskStream()
        waiter = asyncio.create_task(stream.wait(0, 5.0))
        await asyncio.sleep(0)
        stream.publish_tokens(["a"])
        assert True is await waiter
        closer = asyncio.create_task(stream.wait(5, 5.0))
        await asyncio.sleep(0)
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 1})))
        assert True is await closer
