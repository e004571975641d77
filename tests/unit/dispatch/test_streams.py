from __future__ import annotations

import asyncio

import pytest

from llama_orch.dispatch.streams import TaskStream


class TestTaskStream:
    async def test_late_subscriber_replays_everything(self) -> None:
        """A subscriber arriving after the end reads the whole transcript."""
        stream = TaskStream()
        stream.publish("token", {"t": "a", "i": 0})
        stream.publish("end", {"tokens_out": 1})
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
        for i in range(3):
            stream.publish("token", {"t": "x", "i": i})
            await asyncio.sleep(0)
        stream.publish("end", {})
        await reader
        assert ["token", "token", "token", "end"] == received

    def test_nothing_follows_a_terminal_frame(self) -> None:
        """Publishing after the terminal frame is a bug and is refused."""
        stream = TaskStream()
        stream.publish("error", {"code": "INTERNAL"})
        with pytest.raises(RuntimeError):
            stream.publish("token", {"t": "late", "i": 0})

    async def test_one_subscriber_leaving_does_not_break_another(self) -> None:
        """Cancelling one follower leaves the others waiting."""
        stream = TaskStream()
        first = asyncio.create_task(anext(stream.follow()))
        second = asyncio.create_task(anext(stream.follow()))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        stream.publish("token", {"t": "a", "i": 0})
        assert "token" == (await second)[0]
