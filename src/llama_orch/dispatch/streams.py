"""TaskStream: one task's event transcript, published by the dispatcher, read by subscribers.

Dispatch never waits for a subscriber (D-TASK-01): frames go into the transcript, and a
subscriber that arrives late replays it from ``started``. Memory is bounded because a task's
transcript is bounded by its ``max_tokens`` and the registry evicts finished transcripts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from llama_orch.contracts.events import TERMINAL_EVENTS

Frame = tuple[str, bytes]


class TaskStream:
    __slots__ = ("_closed", "_frames", "_nbytes", "_waiters")

    def __init__(self) -> None:
        self._frames: list[Frame] = []
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []
        self._nbytes = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._frames)

    def publish(self, event: str, payload: dict[str, Any]) -> None:
        """Append one frame; a terminal frame closes the stream. Nothing follows a terminal."""
        if self._closed:
            raise RuntimeError(f"stream is closed; refusing {event} frame")
        data = orjson.dumps(payload)
        self._frames.append((event, data))
        self._nbytes += len(data) + len(event) + 16
        if event in TERMINAL_EVENTS:
            self._closed = True
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def frames(self) -> list[Frame]:
        return list(self._frames)

    async def follow(self, start: int = 0) -> AsyncIterator[Frame]:
        """Yield every frame from ``start`` on, waiting for new ones until the terminal frame."""
        index = start
        frames = self._frames
        while True:
            while index < len(frames):
                yield frames[index]
                index += 1
            if self._closed:
                return
            # One future per subscriber: a subscriber that goes away cancels only its own.
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
