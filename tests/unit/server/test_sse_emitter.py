"""The per-subscriber emitter: channel bound, drop rules, micro-batch and heartbeat."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator

import orjson
import pytest

from llama_orch.dispatch.streams import TaskStream
from llama_orch.server.emitter import Emitter, EmitterSettings
from llama_orch.server.sse import KEEPALIVE, encode_frame

STARTED = encode_frame("started", b'{"queue_position":0}')


def parse(body: bytes) -> list[tuple[str, dict[str, object]]]:
    """Split SSE bytes into (event, payload); comment lines become ("comment", {})."""
    frames: list[tuple[str, dict[str, object]]] = []
    for block in body.split(b"\n\n"):
        if not block:
            continue
        if block.startswith(b":"):
            frames.append(("comment", {}))
            continue
        event_line, data_line = block.split(b"\n")
        frames.append((event_line.removeprefix(b"event: ").decode(), orjson.loads(data_line[6:])))
    return frames


def tokens_of(frames: list[tuple[str, dict[str, object]]]) -> tuple[str, list[int]]:
    """The streamed text and, per frame, the index of its first token."""
    text = "".join(str(d["t"]) for e, d in frames if e == "token")
    return text, [int(str(d["i"])) for e, d in frames if e == "token"]


async def drain(chunks: AsyncGenerator[bytes, None]) -> list[bytes]:
    return [chunk async for chunk in chunks]


class TestPlainMode:
    async def test_frames_match_the_transcript(self) -> None:
        """Without pressure every frame is written, byte-identical to its transcript frame."""
        stream = TaskStream()
        stream.publish_tokens(["he"])
        stream.publish_frame(("metrics", orjson.dumps({"queue_depth": 0})))
        stream.publish_tokens(["llo"])
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 2})))
        body = b"".join(await drain(Emitter(stream, STARTED, EmitterSettings()).chunks()))
        expected = STARTED + b"".join(encode_frame(e, d) for e, d in stream.frames())
        assert expected == body

    async def test_replay_is_never_dropped(self) -> None:
        """A late subscriber gets every frame, metrics included, even past the channel cap."""
        stream = TaskStream()
        for i in range(50):
            stream.publish_tokens([str(i)])
            stream.publish_frame(("metrics", orjson.dumps({"n": i})))
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 50})))
        emitter = Emitter(stream, STARTED, EmitterSettings(channel_cap=4))
        chunks = await drain(emitter.chunks())
        frames = parse(b"".join(chunks))
        assert (0, 50, 50) == (
            emitter.dropped,
            [e for e, _ in frames].count("metrics"),
            [e for e, _ in frames].count("token"),
        )
        assert all(chunk.count(b"\n\n") <= 4 for chunk in chunks)

    async def test_backpressure_drops_metrics_only(self) -> None:
        """A subscriber behind by more than the cap loses metrics frames, counted, never tokens."""
        stream = TaskStream()
        drops: list[int] = []
        emitter = Emitter(stream, STARTED, EmitterSettings(channel_cap=8), on_drop=drops.append)
        chunks = emitter.chunks()
        assert STARTED == await anext(chunks)
        for i in range(100):
            stream.publish_tokens([f"<{i}>"])
            if i % 5 == 0:
                stream.publish_frame(("metrics", orjson.dumps({"n": i})))
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 100})))
        frames = parse(b"".join(await drain(chunks)))
        text, indices = tokens_of(frames)
        assert "".join(f"<{i}>" for i in range(100)) == text
        assert list(range(100)) == indices
        assert "end" == frames[-1][0]
        assert emitter.dropped == sum(drops) > 0
        assert 20 == emitter.dropped + [e for e, _ in frames].count("metrics")

    async def test_chunks_are_bounded_by_the_cap(self) -> None:
        """One chunk never carries more than channel_cap frames."""
        stream = TaskStream()
        emitter = Emitter(stream, STARTED, EmitterSettings(channel_cap=5))
        chunks = emitter.chunks()
        await anext(chunks)
        for _ in range(23):
            stream.publish_tokens(["x"])
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 23})))
        sizes = [chunk.count(b"\n\n") for chunk in await drain(chunks)]
        assert [5, 5, 5, 5, 4] == sizes

    async def test_live_subscriber_is_woken(self) -> None:
        """Frames published while the writer waits reach it in order."""
        stream = TaskStream()
        reader = asyncio.create_task(drain(Emitter(stream, STARTED, EmitterSettings()).chunks()))
        for i in range(5):
            await asyncio.sleep(0)
            stream.publish_tokens([str(i)])
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 5})))
        text, indices = tokens_of(parse(b"".join(await reader)))
        assert ("01234", [0, 1, 2, 3, 4]) == (text, indices)


class TestMicroBatch:
    async def test_backlog_is_merged_up_to_max_tokens(self) -> None:
        """A backlog of tokens becomes frames of at most max_tokens, with t, i and n (§17.14)."""
        stream = TaskStream()
        for i in range(10):
            stream.publish_tokens([chr(97 + i)])
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 10})))
        settings = EmitterSettings(microbatch=True, max_tokens=4)
        frames = parse(b"".join(await drain(Emitter(stream, STARTED, settings).chunks())))
        tokens = [d for e, d in frames if e == "token"]
        assert [
            {"t": "abcd", "i": 0, "n": 4},
            {"t": "efgh", "i": 4, "n": 4},
            {"t": "ij", "i": 8, "n": 2},
        ] == tokens

    async def test_first_token_is_not_delayed_and_later_ones_are_held(self) -> None:
        """After a quiet spell a token goes out at once; tokens right behind it are coalesced."""
        stream = TaskStream()
        # A budget far longer than any stall of a loaded machine: the run of tokens ends by
        # reaching max_tokens, so what is held does not depend on how fast the loop turns.
        settings = EmitterSettings(microbatch=True, max_delay_s=30.0, max_tokens=3)
        chunks = Emitter(stream, STARTED, settings).chunks()
        await anext(chunks)
        stream.publish_tokens(["a"])
        # Held, it would wait out the 30 s budget or two more tokens that never come.
        first = await asyncio.wait_for(anext(chunks), 10.0)
        assert [("token", {"t": "a", "i": 0, "n": 1})] == parse(first)
        nxt = asyncio.ensure_future(anext(chunks))
        for letter in "bc":
            stream.publish_tokens([letter])
            await asyncio.sleep(0.005)
            assert not nxt.done()
        stream.publish_tokens(["d"])
        second = await asyncio.wait_for(nxt, 10.0)
        assert [("token", {"t": "bcd", "i": 1, "n": 3})] == parse(second)
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 4})))
        assert "end" == parse(b"".join(await drain(chunks)))[-1][0]

    async def test_held_tokens_go_out_when_the_delay_budget_is_spent(self) -> None:
        """A run shorter than max_tokens with no frame behind it is written once the delay
        budget since the last write is spent, as one coalesced chunk."""
        stream = TaskStream()
        settings = EmitterSettings(microbatch=True, max_delay_s=0.05, max_tokens=32)
        chunks = Emitter(stream, STARTED, settings).chunks()
        await anext(chunks)
        stream.publish_tokens(["a"])
        assert [("token", {"t": "a", "i": 0, "n": 1})] == parse(await anext(chunks))
        for letter in "bcd":
            stream.publish_tokens([letter])
        second = await asyncio.wait_for(anext(chunks), 10.0)
        assert [("token", {"t": "bcd", "i": 1, "n": 3})] == parse(second)
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 4})))
        assert "end" == parse(b"".join(await drain(chunks)))[-1][0]

    async def test_terminal_flushes_held_tokens_at_once(self) -> None:
        """The end frame does not wait for the delay budget."""
        stream = TaskStream()
        settings = EmitterSettings(microbatch=True, max_delay_s=60.0)
        chunks = Emitter(stream, STARTED, settings).chunks()
        await anext(chunks)
        stream.publish_tokens(["a"])
        await anext(chunks)
        stream.publish_tokens(["b"])
        rest = asyncio.ensure_future(drain(chunks))
        await asyncio.sleep(0.01)
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 2})))
        # Far inside the 60 s budget, and generous for a loaded machine.
        frames = parse(b"".join(await asyncio.wait_for(rest, 20.0)))
        assert ["token", "end"] == [e for e, _ in frames]

    @pytest.mark.parametrize("seed", range(20))
    async def test_token_sequence_never_changes(self, seed: int) -> None:
        """Under random publish and read schedules the text and indices are those of the
        transcript, whatever the mode; only metrics may go missing."""
        rng = random.Random(seed)
        stream = TaskStream()
        settings = EmitterSettings(
            channel_cap=rng.choice([1, 2, 8, 32]),
            microbatch=rng.random() < 0.5,
            max_delay_s=0.001,
            max_tokens=rng.choice([1, 3, 32]),
        )
        emitter = Emitter(stream, STARTED, settings)
        count = rng.randint(0, 200)
        words = [f"w{i};" for i in range(count)]

        async def produce() -> None:
            for word in words:
                stream.publish_tokens([word])
                if rng.random() < 0.2:
                    stream.publish_frame(("metrics", orjson.dumps({"x": 1})))
                if rng.random() < 0.3:
                    await asyncio.sleep(0)
            stream.publish_frame(("end", orjson.dumps({"tokens_out": count})))

        async def consume() -> bytes:
            out = []
            async for chunk in emitter.chunks():
                out.append(chunk)
                for _ in range(rng.randint(0, 3)):
                    await asyncio.sleep(0)
            return b"".join(out)

        body, _ = await asyncio.gather(consume(), produce())
        frames = parse(body)
        text, starts = tokens_of(frames)
        assert "".join(words) == text
        counts = [int(str(d.get("n", 1))) for e, d in frames if e == "token"]
        assert starts == [sum(counts[:k]) for k in range(len(counts))]
        assert ["started"] == [e for e, _ in frames[:1]] and "end" == frames[-1][0]


class TestHeartbeat:
    async def test_keepalive_while_idle(self) -> None:
        """An idle stream carries keep-alive comments, and frames still follow."""
        stream = TaskStream()
        settings = EmitterSettings(heartbeat_s=0.01)
        chunks = Emitter(stream, STARTED, settings).chunks()
        await anext(chunks)
        assert KEEPALIVE == await asyncio.wait_for(anext(chunks), 10.0)
        assert KEEPALIVE == await asyncio.wait_for(anext(chunks), 10.0)
        stream.publish_frame(("end", orjson.dumps({"tokens_out": 0})))
        assert [("end", {"tokens_out": 0})] == parse(b"".join(await drain(chunks)))

    async def test_no_keepalive_when_off(self) -> None:
        """With the heartbeat off an idle stream writes nothing."""
        stream = TaskStream()
        chunks = Emitter(stream, STARTED, EmitterSettings()).chunks()
        await anext(chunks)
        pending = asyncio.ensure_future(anext(chunks))
        await asyncio.sleep(0.05)
        assert not pending.done()
        stream.publish_frame(("end", orjson.dumps({})))
        assert b"event: end" in await pending
