"""Pushed writes from a task's transcript (the ``Pusher`` side of ``SseResponse``).

A streamed answer's writer is a task that reads the transcript and sends what it finds. When
it has caught up, waking it for every token costs a future, a task step and a trip through
its generators. Instead, while it is parked, the transcript's listener renders what was just
published and pushes it to the server from the publisher's own step (for a token, the engine
connection's callback). The writer runs again only when it must:

- the stream closed (the terminal frame and the body's end are always the writer's, so the
  end of the response keeps one place);
- a pushed send did not complete on the spot (back-pressure) or failed: the writer finishes it
  or ends the response, before anything else is sent;
- a timeout the reader asked for passed (heartbeats, queue-position comments).
"""

from __future__ import annotations

import abc
import asyncio

from llama_orch.dispatch.streams import TaskStream
from llama_orch.server.sse import Push


class TranscriptPusher(abc.ABC):
    """Base of a transcript reader that can push: subclasses say what a publish writes
    (``render``), their generator awaits ``park`` when it has caught up."""

    __slots__ = ("_parked", "_push", "_stream")

    def __init__(self, stream: TaskStream) -> None:
        self._stream = stream
        self._push: Push | None = None
        self._parked: asyncio.Future[bool] | None = None

    def attach(self, push: Push) -> None:
        """Called by ``SseResponse`` once the response has started."""
        self._push = push

    @property
    def pushing(self) -> bool:
        return self._push is not None

    async def park(self, timeout_s: float | None = None) -> bool:
        """Wait, caught up, while what is published is pushed. True: the writer must run (the
        stream closed, or a push is unfinished); False: ``timeout_s`` passed."""
        loop = asyncio.get_running_loop()
        parked: asyncio.Future[bool] = loop.create_future()
        self._parked = parked
        timer = loop.call_later(timeout_s, _idle, parked) if timeout_s is not None else None
        listener = self._on_publish
        self._stream.listen(listener)
        try:
            return await parked
        finally:
            self._stream.unlisten(listener)
            self._parked = None
            if timer is not None:
                timer.cancel()

    @abc.abstractmethod
    def render(self) -> bytes | None:
        """What the reader writes for the entries published since its place, advancing the
        place past them; None when they write nothing. Never called once the stream closed."""

    def _on_publish(self) -> None:
        parked = self._parked
        if parked is None or parked.done():
            return
        if self._stream.closed:
            parked.set_result(True)
            return
        chunk = self.render()
        if chunk is None:
            return
        push = self._push
        assert push is not None
        if not push(chunk):
            parked.set_result(True)


def _idle(parked: asyncio.Future[bool]) -> None:
    if not parked.done():
        parked.set_result(False)
