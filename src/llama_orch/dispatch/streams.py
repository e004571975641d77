"""TaskStream: one task's transcript, published by the dispatcher, read by subscribers.

Dispatch never waits for a subscriber (D-TASK-01): frames go into the transcript, and a
subscriber that arrives late replays it from the first frame. The transcript is the durable
record of the stream; its memory is bounded by the task's ``max_tokens`` while it runs and by
the registry's retention bounds once it has ended. The bounded per-subscriber channel and its
drop rules live with the writer (``llama_orch.server.emitter``), which reads this transcript by
index and never copies it.

Entries are stored in the cheapest shape that still lets the writer re-frame them: a token is
its text (``str``; its index is its rank among the tokens), any other frame is its event name
and its JSON bytes. A token therefore costs no dict, no JSON encoding and no bytes object when
it is published: encoding happens once, in the writer, which can also merge tokens
(micro-batch) without parsing JSON back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import orjson

from llama_orch.contracts.events import TERMINAL_EVENTS
from llama_orch.contracts.frames import Frame, encode_frame, encode_token

#: A transcript entry: a token's text, or a non-token frame.
Entry = str | Frame

# Rough per-entry overhead (list slot, object headers) for the retention byte bound.
_ENTRY_OVERHEAD = 64


class TaskStream:
    __slots__ = (
        "_closed",
        "_entries",
        "_listeners",
        "_nbytes",
        "_subscribed",
        "_tokens",
        "_waiters",
    )

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []
        self._listeners: list[Callable[[], None]] = []
        self._nbytes = 0
        self._tokens = 0
        self._subscribed = False

    # -- the one live subscriber -----------------------------------------------------------------

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    def subscribe(self) -> bool:
        """Claim the stream for one live subscriber; False when another holds it."""
        if self._subscribed:
            return False
        self._subscribed = True
        return True

    def unsubscribe(self) -> None:
        self._subscribed = False

    def listen(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` right after each publish, in the publisher's own step, until
        ``unlisten``.

        A caught-up writer uses it to write what was just published without a wake-up of its
        task per token: the live subscriber's, and a front door answering the request that
        admitted the task, both at once. A listener must not raise or publish.
        """
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[], None]) -> None:
        self._listeners.remove(listener)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the transcript, for the retention bound."""
        return self._nbytes

    @property
    def tokens(self) -> int:
        return self._tokens

    @property
    def entries(self) -> list[Entry]:
        """The live transcript; readers index into it and must not mutate it."""
        return self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def publish_tokens(self, texts: Sequence[str]) -> None:
        """Append consecutive tokens (one upstream read's) in order, with one wake-up; the
        first one's index is the number of tokens before it."""
        if self._closed:
            raise RuntimeError("stream is closed; refusing a token frame")
        count = len(texts)
        if count == 1:
            # The common case (engines that write one token per frame), kept cheap.
            text = texts[0]
            self._entries.append(text)
            self._nbytes += len(text) + _ENTRY_OVERHEAD
        else:
            self._entries.extend(texts)
            self._nbytes += sum(map(len, texts)) + _ENTRY_OVERHEAD * count
        self._tokens += count
        self._notify()

    def publish_frame(self, frame: Frame) -> None:
        """Append one non-token frame; a terminal frame closes the stream for good."""
        event, data = frame
        if self._closed:
            raise RuntimeError(f"stream is closed; refusing {event} frame")
        self._entries.append(frame)
        self._nbytes += len(data) + len(event) + _ENTRY_OVERHEAD
        if event in TERMINAL_EVENTS:
            self._closed = True
        self._notify()

    def _notify(self) -> None:
        """After a publish: the listeners in the publisher's step, then the waiting readers."""
        for listener in self._listeners:
            listener()
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, index: int, within_s: float | None = None) -> bool:
        """Wait until an entry at ``index`` exists or the stream closes; False on timeout."""
        if index < len(self._entries) or self._closed:
            return True
        loop = asyncio.get_running_loop()
        # One future per waiting reader: a reader that goes away cancels only its own.
        waiter = loop.create_future()
        self._waiters.append(waiter)
        if within_s is None:
            await waiter
            return True
        handle = loop.call_later(within_s, _expire, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
        if index < len(self._entries) or self._closed:
            return True
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass
        return False

    def frames(self) -> list[Frame]:
        """The transcript as (event, JSON) frames, one per token (for tests and proof bundles)."""
        out: list[Frame] = []
        index = 0
        for entry in self._entries:
            if isinstance(entry, str):
                out.append(("token", orjson.dumps({"t": entry, "i": index})))
                index += 1
            else:
                out.append(entry)
        return out

    def sse(self) -> bytes:
        """The transcript as SSE bytes, exactly as a subscriber without micro-batch reads it
        (the stream trace): each entry encoded once, with no (event, JSON) frame built first."""
        out: list[bytes] = []
        index = 0
        for entry in self._entries:
            if type(entry) is str:
                out.append(encode_token(entry, index))
                index += 1
            else:
                out.append(encode_frame(*entry))
        return b"".join(out)

    async def follow(self, start: int = 0) -> AsyncIterator[Frame]:
        """Yield every frame from entry ``start`` on, waiting for new ones until the terminal."""
        index = start
        token_index = sum(1 for e in self._entries[:start] if isinstance(e, str))
        entries = self._entries
        while True:
            while index < len(entries):
                entry = entries[index]
                index += 1
                if isinstance(entry, str):
                    yield "token", orjson.dumps({"t": entry, "i": token_index})
                    token_index += 1
                else:
                    yield entry
            if self._closed:
                return
            await self.wait(index)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
