"""Emitter: one subscriber's view of a task transcript, written as SSE chunks.

The producer (the dispatcher) appends to the task's transcript and never waits. Each
subscriber's writer reads the transcript by index; the entries it has not yet handed to the
server form its channel, bounded by ``channel_cap`` (SSE-1004):

- the writer hands at most ``channel_cap`` frames to the server per chunk, so one send is
  bounded and frames are coalesced into one write whenever the client is behind;
- when more than ``channel_cap`` live frames wait, the client is under back-pressure and
  waiting ``metrics`` frames are dropped (counted); ``token`` frames are never dropped or
  reordered, because they are read from the transcript, which holds every one of them;
- frames that already existed when the subscriber arrived are a replay (D-TASK-01) and are
  written in full, never dropped.

The producer is therefore never slowed by a subscriber, and a subscriber's memory is the
transcript it shares with the registry plus at most one chunk of ``channel_cap`` frames.

Micro-batch mode merges consecutive tokens into one frame (``t`` concatenated, ``i`` the first
index, ``n`` the count, §17.14). It never holds a token longer than ``max_delay`` after the
previous write and never merges more than ``max_tokens``; a token arriving after a quiet spell
longer than ``max_delay`` is written at once, so the first token is never delayed.

While the writer is caught up, what is published is encoded and pushed to the server from the
publisher's own step (``server.pushing``); micro-batch mode keeps the writer, which holds
tokens back to merge them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from llama_orch.dispatch.service import StreamSettings
from llama_orch.dispatch.streams import TaskStream
from llama_orch.server.pushing import TranscriptPusher
from llama_orch.server.sse import KEEPALIVE, encode_frame, encode_token, encode_tokens

#: The merged settings ``TaskService.open_stream`` hands over.
EmitterSettings = StreamSettings


class Emitter(TranscriptPusher):
    """Turns a transcript into SSE chunks for one subscriber."""

    __slots__ = (
        "_cursor",
        "_last_write",
        "_on_drop",
        "_settings",
        "_started",
        "dropped",
        "frames_written",
    )

    def __init__(
        self,
        stream: TaskStream,
        started: bytes,
        settings: EmitterSettings,
        *,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(stream)
        self._started = started
        self._settings = settings
        self._on_drop = on_drop
        self.dropped = 0
        self.frames_written = 0
        self._cursor = _Cursor(live_from=0)
        self._last_write = -1e18

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """``started`` first, then the transcript, keep-alives while idle; ends after a terminal."""
        stream = self._stream
        entries = stream.entries
        microbatch = self._settings.microbatch
        heartbeat = self._settings.heartbeat_s or None
        loop = asyncio.get_running_loop()
        # Everything already in the transcript is a replay: written in full, never dropped.
        cursor = self._cursor = _Cursor(live_from=len(entries))
        yield self._started
        self.frames_written = 1
        while True:
            if cursor.index >= len(entries):
                if stream.closed:
                    return
                if self.pushing and not microbatch:
                    due = None
                    if heartbeat is not None:
                        due = max(0.0, self._last_write + heartbeat - loop.time())
                    if await self.park(due):
                        if not stream.closed:  # the writer's turn: a pushed send to finish
                            yield b""
                    elif loop.time() - self._last_write >= (heartbeat or 0.0):
                        self._last_write = loop.time()
                        yield KEEPALIVE
                    continue
                if not await stream.wait(cursor.index, heartbeat):
                    yield KEEPALIVE
                    continue
            if microbatch and not stream.closed:
                await self._hold(cursor.index, self._last_write + self._settings.max_delay_s, loop)
            parts = self._next_chunk(cursor, len(entries))
            if parts:
                self.frames_written += len(parts)
                self._last_write = loop.time()
                yield parts[0] if len(parts) == 1 else b"".join(parts)

    def render(self) -> bytes | None:
        parts = self._next_chunk(self._cursor, len(self._stream.entries))
        if not parts:
            return None
        self.frames_written += len(parts)
        if self._settings.heartbeat_s:
            self._last_write = asyncio.get_running_loop().time()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _hold(self, index: int, flush_at: float, loop: asyncio.AbstractEventLoop) -> None:
        """Micro-batch: let a run of tokens grow until the delay budget since the last write
        is spent, ``max_tokens`` wait, or a non-token frame arrives."""
        stream = self._stream
        entries = stream.entries
        max_tokens = self._settings.max_tokens
        while not stream.closed and len(entries) - index < max_tokens and type(entries[-1]) is str:
            left = flush_at - loop.time()
            if left <= 0:
                return
            await stream.wait(len(entries), left)

    def _next_chunk(self, cursor: _Cursor, end: int) -> list[bytes]:
        """Encode up to ``channel_cap`` frames from the cursor on; under back-pressure (more
        than ``channel_cap`` live frames waiting) waiting ``metrics`` frames are dropped."""
        entries = self._stream.entries
        cap = self._settings.channel_cap
        microbatch = self._settings.microbatch
        drop_metrics = end - cursor.index > cap
        parts: list[bytes] = []
        dropped = 0
        index, token_index = cursor.index, cursor.token_index
        while index < end and len(parts) < cap:
            entry = entries[index]
            if isinstance(entry, str):
                count = self._token_run(index, end) if microbatch else 1
                if microbatch:
                    run = entries[index : index + count]
                    text = entry if count == 1 else "".join(run)  # type: ignore[arg-type]
                    parts.append(encode_tokens(text, token_index, count))
                else:
                    parts.append(encode_token(entry, token_index))
                token_index += count
                index += count
                continue
            event, data = entry
            if drop_metrics and event == "metrics" and index >= cursor.live_from:
                dropped += 1
            else:
                parts.append(encode_frame(event, data))
            index += 1
        cursor.index, cursor.token_index = index, token_index
        if dropped:
            self.dropped += dropped
            if self._on_drop is not None:
                self._on_drop(dropped)
        return parts

    def _token_run(self, index: int, end: int) -> int:
        """How many consecutive tokens from ``index`` one micro-batch frame takes."""
        entries = self._stream.entries
        stop = min(end, index + self._settings.max_tokens)
        run = index + 1
        while run < stop and type(entries[run]) is str:
            run += 1
        return run - index


class _Cursor:
    """Where one subscriber is in the transcript."""

    __slots__ = ("index", "live_from", "token_index")

    def __init__(self, live_from: int) -> None:
        #: Transcript entries before this one existed when the subscriber arrived (a replay).
        self.live_from = live_from
        self.index = 0
        self.token_index = 0
