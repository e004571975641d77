"""StatusFeed: one snapshot per tick, shared by every console connected to ``/v1/events``.

The snapshot is read and encoded once per tick whatever the number of viewers, and only while
at least one is connected. Each section is compared with the one sent before as bytes; only
the sections that changed are handed to the viewers. A viewer keeps at most one pending frame
per section (the newest), so a slow reader never makes the server hold a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Protocol

from llama_orch.contracts.console import EVENT_NAMES, Status
from llama_orch.observability.redaction import Redactor
from llama_orch.server.sse import KEEPALIVE, encode_frame


class StatusSource(Protocol):
    """Where snapshots come from (``StatusReader`` in the server)."""

    def read(self) -> Status: ...


class _Viewer:
    __slots__ = ("pending", "wake")

    def __init__(self, frames: dict[str, bytes]) -> None:
        self.pending = dict(frames)
        self.wake = asyncio.Event()
        self.wake.set()


class StatusFeed:
    def __init__(
        self,
        reader: StatusSource,
        *,
        interval_s: float,
        heartbeat_s: float,
        redactor: Redactor | None = None,
    ) -> None:
        self._reader = reader
        #: The feed is a stream, which the server's answer redaction leaves alone: its
        #: sections (pool models, engine errors, last log lines) are redacted here instead,
        #: as ``/v1/status`` is on its way out.
        self._redactor = redactor or Redactor()
        self._interval_s = interval_s
        self._heartbeat_s = heartbeat_s
        self._viewers: set[_Viewer] = set()
        #: Event name -> the frame last sent for it.
        self._frames: dict[str, bytes] = {}
        self._fresh_at = float("-inf")
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        #: Snapshots built so far (the benchmark reads it).
        self.ticks = 0

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def read(self) -> Status:
        return self._reader.read()

    def _refresh(self) -> list[str]:
        """Read a snapshot; returns the names of the sections that changed."""
        self.ticks += 1
        self._fresh_at = asyncio.get_running_loop().time()
        changed = []
        for name, section in self._reader.read().sections().items():
            data = self._redactor.text(section.model_dump_json())
            frame = encode_frame(name, data.encode())
            if self._frames.get(name) != frame:
                self._frames[name] = frame
                changed.append(name)
        return changed

    def _join(self) -> _Viewer:
        if asyncio.get_running_loop().time() - self._fresh_at >= self._interval_s:
            self._refresh()
        viewer = _Viewer(self._frames)
        self._viewers.add(viewer)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="console-feed")
        return viewer

    async def _tick(self) -> None:
        while self._viewers and not self._closed:
            await asyncio.sleep(self._interval_s)
            changed = self._refresh()
            if not changed:
                continue
            for viewer in self._viewers:
                for name in changed:
                    viewer.pending[name] = self._frames[name]
                viewer.wake.set()

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """Every section first, then the sections that change, with heartbeats in between."""
        if self._closed:
            return
        viewer = self._join()
        try:
            while not self._closed:
                try:
                    # Not wait_for: on Python 3.11 it returns the wake-up instead of raising
                    # when the task is cancelled in the same turn (the client went away just
                    # as a frame came), and the viewer would write to nobody for good.
                    async with asyncio.timeout(self._heartbeat_s):
                        await viewer.wake.wait()
                except TimeoutError:
                    yield KEEPALIVE
                    continue
                viewer.wake.clear()
                if self._closed:
                    return
                pending = viewer.pending
                viewer.pending = {}
                yield b"".join(pending[n] for n in EVENT_NAMES if n in pending)
        finally:
            self._viewers.discard(viewer)

    def close(self) -> None:
        """End every viewer's stream (the server is stopping)."""
        self._closed = True
        for viewer in self._viewers:
            viewer.wake.set()

    async def aclose(self) -> None:
        self.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
