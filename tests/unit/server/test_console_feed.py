"""StatusFeed with a counting snapshot source: one read per tick for every viewer, only the
changed sections after the first, no backlog for a slow viewer, and an end on close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from llama_orch.contracts.console import (
    EVENT_NAMES,
    ConsoleFeatures,
    GpuEvent,
    MetaEvent,
    PoolEvent,
    QueueEvent,
    Status,
    TaskEvent,
)
from llama_orch.server.console.feed import StatusFeed
from llama_orch.server.sse import KEEPALIVE


class CountingSource:
    """Snapshots whose ``meta.snapshot_version`` is whatever ``version`` is set to."""

    def __init__(self) -> None:
        self.reads = 0
        self.version = 0

    def read(self) -> Status:
        self.reads += 1
        features = ConsoleFeatures(drain=False, reload=False, catalog=False)
        return Status(
            meta=MetaEvent(
                api_version="1.0.0",
                simulated=True,
                features=features,
                interval_ms=10,
                snapshot_version=self.version,
            ),
            gpu=GpuEvent(gpus=[]),
            pool=PoolEvent(pools=[]),
            queue=QueueEvent(queues=[]),
            task=TaskEvent(running=[], finished=[]),
        )


def names(chunk: bytes) -> list[str]:
    return [line[7:].decode() for line in chunk.split(b"\n") if line.startswith(b"event: ")]


async def until(predicate: object) -> None:
    for _ in range(1000):
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


class TestStatusFeed:
    async def test_viewers_share_each_snapshot(self) -> None:
        """Three viewers get every section first, then only what changed; the source is read
        once per tick whatever the number of viewers."""
        source = CountingSource()
        feed = StatusFeed(source, interval_s=0.01, heartbeat_s=5)
        viewers = [feed.frames() for _ in range(3)]
        firsts = [await anext(v) for v in viewers]
        assert [list(EVENT_NAMES)] * 3 == [names(c) for c in firsts]
        source.version = 1
        changed = [await anext(v) for v in viewers]
        assert [["meta"]] * 3 == [names(c) for c in changed]
        assert source.reads == feed.ticks
        assert 3 == feed.viewers
        for viewer in viewers:
            await viewer.aclose()
        assert 0 == feed.viewers
        await feed.aclose()

    async def test_slow_viewer_gets_only_the_newest_frame(self) -> None:
        """A viewer that does not read for many ticks is handed one frame per section."""
        source = CountingSource()
        feed = StatusFeed(source, interval_s=0.005, heartbeat_s=5)
        viewer: AsyncGenerator[bytes, None] = feed.frames()
        await anext(viewer)
        for version in range(1, 6):
            source.version = version
            reads = source.reads
            await until(lambda reads=reads: source.reads > reads)
        chunk = await anext(viewer)
        assert ["meta"] == names(chunk)
        assert b'"snapshot_version":5' in chunk
        await viewer.aclose()
        await feed.aclose()

    async def test_heartbeat_and_close(self) -> None:
        """An idle feed sends heartbeats; close ends every viewer's stream."""
        feed = StatusFeed(CountingSource(), interval_s=0.01, heartbeat_s=0.02)
        viewer = feed.frames()
        await anext(viewer)
        assert KEEPALIVE == await anext(viewer)
        feed.close()
        assert [] == [chunk async for chunk in viewer]
        assert [] == [chunk async for chunk in feed.frames()]
        await feed.aclose()

    async def test_a_viewer_cancelled_as_a_frame_arrives_ends_cancelled(self) -> None:
        """A viewer cancelled (its client went away) in the same turn of the loop as a new
        frame wakes it ends cancelled. A swallowed cancellation kept the viewer's task writing
        to a gone client for good, and the server's shutdown waited on it forever."""

        class ChangingSource(CountingSource):
            def read(self) -> Status:
                self.version += 1
                return super().read()

        swallowed = []
        for turns in range(12):
            feed = StatusFeed(ChangingSource(), interval_s=0.0, heartbeat_s=60.0)
            received = asyncio.Event()

            async def view(feed: StatusFeed = feed, received: asyncio.Event = received) -> None:
                async for _ in feed.frames():
                    received.set()

            task = asyncio.create_task(view())
            await received.wait()
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            for _ in range(5):
                await asyncio.sleep(0)
            await feed.aclose()
            await asyncio.wait({task})
            if not task.cancelled():
                swallowed.append(turns)
        assert [] == swallowed
