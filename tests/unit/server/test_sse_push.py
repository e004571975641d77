"""Pushed writes: frames published while the writer is caught up go to the server from the
publisher's own step, in order, and the writer takes over for what cannot be pushed."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from llama_orch.dispatch.streams import TaskStream
from llama_orch.server.emitter import Emitter, EmitterSettings
from llama_orch.server.frontdoor._tasks import Finished, Place, Ticket, follow
from llama_orch.server.pushing import TranscriptPusher
from llama_orch.server.sse import KEEPALIVE, Outcome, SseResponse, encode_frame, encode_token
from tests.unit.server.test_sse_response import FakeServer

STARTED = encode_frame("started", b'{"queue_position":0}')
END = ("end", orjson.dumps({"tokens_out": 3}))


class Server(FakeServer):
    """Sends complete without suspending (as granian's do while its buffer has room), unless
    gated (back-pressure) or failing; each records whether the writer's task made it."""

    def __init__(self) -> None:
        super().__init__()
        #: Body sends from this index on wait for ``release`` (back-pressure).
        self.gate_from: int | None = None
        self.release = asyncio.Event()
        self.fail_from: int | None = None
        self.in_task: list[bool] = []

    async def send(self, message: dict[str, Any]) -> None:
        index = len(self.messages)
        if message["type"] == "http.response.body":
            if self.fail_from is not None and index >= self.fail_from:
                raise OSError("connection reset")
            if self.gate_from is not None and index >= self.gate_from:
                await self.release.wait()
        self.in_task.append(_writer_is_running())
        self.messages.append(message)


#: Set while the test's own code (not the response's writer task) calls ``publish``.
_publishing = False


def _writer_is_running() -> bool:
    return not _publishing


def publish(stream: TaskStream, texts: list[str] | None = None, frame: Any = None) -> None:
    global _publishing
    _publishing = True
    try:
        if texts is not None:
            stream.publish_tokens(texts)
        if frame is not None:
            stream.publish_frame(frame)
    finally:
        _publishing = False


async def settle(predicate: Any, turns: int = 1000) -> None:
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def start(
    stream: TaskStream,
    server: Server,
    settings: EmitterSettings | None = None,
    stall_limit_s: float | None = None,
) -> tuple[asyncio.Task[None], list[Outcome]]:
    emitter = Emitter(stream, STARTED, settings or EmitterSettings())
    outcomes: list[Outcome] = []
    response = SseResponse(
        emitter.chunks(),
        headers={},
        on_end=outcomes.append,
        stall_limit_s=stall_limit_s,
        pusher=emitter,
    )
    scope = {"type": "http", "http_version": "1.1"}
    task = asyncio.create_task(response(scope, server.receive, server.send))  # type: ignore[arg-type]
    return task, outcomes


class TestPushedWrites:
    async def test_a_caught_up_writer_gets_frames_in_the_publishers_step(self) -> None:
        """Each token reaches the server inside ``publish`` itself, in order; the terminal
        frame and the body's end are the writer's."""
        stream, server = TaskStream(), Server()
        task, outcomes = start(stream, server)
        await settle(lambda: len(server.messages) == 2)  # response start, started
        for i, text in enumerate(["a", "b", "c"]):
            publish(stream, [text])
            assert encode_token(text, i) == server.messages[-1]["body"]
        metrics = ("metrics", orjson.dumps({"queue_depth": 0}))
        publish(stream, frame=metrics)
        assert encode_frame(*metrics) == server.messages[-1]["body"]
        assert [False] * 4 == server.in_task[2:]
        publish(stream, frame=END)
        await asyncio.wait_for(task, 5)
        assert [Outcome.COMPLETE] == outcomes
        expected = STARTED + b"".join(encode_frame(e, d) for e, d in stream.frames())
        assert expected == server.body
        assert [True, True] == server.in_task[-2:]  # end frame, then the body's end
        assert False is server.messages[-1]["more_body"]

    async def test_a_send_that_waits_is_finished_by_the_writer_in_order(self) -> None:
        """Back-pressure: a pushed send that suspends is finished by the writer; what is
        published meanwhile waits in the transcript and follows it, nothing lost or doubled."""
        stream, server = TaskStream(), Server()
        server.gate_from = 3  # start, started, one pushed token; the next one waits
        task, outcomes = start(stream, server)
        await settle(lambda: len(server.messages) == 2)
        publish(stream, ["t0"])
        publish(stream, ["t1"])  # suspends in the server
        publish(stream, ["t2"])
        publish(stream, ["t3"])
        assert 3 == len(server.messages)
        server.release.set()
        publish(stream, frame=END)
        await asyncio.wait_for(task, 5)
        assert [Outcome.COMPLETE] == outcomes
        expected = STARTED + b"".join(encode_frame(e, d) for e, d in stream.frames())
        assert expected == server.body

    async def test_a_failed_pushed_send_is_a_disconnect(self) -> None:
        """A pushed send that raises ends the response as DISCONNECT, not in the publisher."""
        stream, server = TaskStream(), Server()
        server.fail_from = 2
        task, outcomes = start(stream, server)
        await settle(lambda: len(server.messages) == 2)
        publish(stream, ["x"])  # must not raise here
        await asyncio.wait_for(task, 5)
        assert [Outcome.DISCONNECT] == outcomes

    async def test_a_pushed_send_that_never_completes_is_a_stall(self) -> None:
        """The stall limit covers a pushed send left waiting, as it does the writer's own."""
        stream, server = TaskStream(), Server()
        server.gate_from = 2
        task, outcomes = start(stream, server, stall_limit_s=0.05)
        await settle(lambda: len(server.messages) == 2)
        publish(stream, ["x"])
        await asyncio.wait_for(task, 5)
        assert [Outcome.STALL] == outcomes

    async def test_a_late_subscriber_replays_then_pushes(self) -> None:
        """Frames published before the response are the writer's replay; later ones are
        pushed; the whole body equals the transcript."""
        stream, server = TaskStream(), Server()
        publish(stream, ["r0", "r1"])
        task, outcomes = start(stream, server)
        await settle(lambda: len(server.messages) == 3)
        publish(stream, ["p2"])
        assert encode_token("p2", 2) == server.messages[-1]["body"]
        publish(stream, frame=END)
        await asyncio.wait_for(task, 5)
        expected = STARTED + b"".join(encode_frame(e, d) for e, d in stream.frames())
        assert expected == server.body and [Outcome.COMPLETE] == outcomes

    async def test_heartbeats_still_come_while_idle(self) -> None:
        """With heartbeats on, a parked writer still sends a keep-alive after the silence."""
        stream, server = TaskStream(), Server()
        task, _ = start(stream, server, EmitterSettings(heartbeat_s=0.02))
        await settle(lambda: len(server.messages) == 2)
        publish(stream, ["a"])
        while KEEPALIVE not in [m.get("body") for m in server.messages]:
            await asyncio.sleep(0.005)
        publish(stream, frame=END)
        await asyncio.wait_for(task, 5)
        bodies = [m.get("body") for m in server.messages]
        assert bodies.index(encode_token("a", 0)) < bodies.index(KEEPALIVE)

    async def test_micro_batch_is_not_pushed(self) -> None:
        """Micro-batching holds tokens to merge them: the writer keeps that job."""
        stream, server = TaskStream(), Server()
        settings = EmitterSettings(microbatch=True, max_tokens=8, max_delay_s=0.05)
        task, _ = start(stream, server, settings)
        await settle(lambda: len(server.messages) == 2)
        publish(stream, ["a"])
        assert 2 == len(server.messages)  # not pushed
        publish(stream, ["b"])
        publish(stream, frame=END)
        await asyncio.wait_for(task, 5)
        assert all(server.in_task)


class _Texts(TranscriptPusher):
    """A front door's reader: pushes the new tokens' text, as the chat answer does."""

    def __init__(self, stream: TaskStream, place: Place) -> None:
        super().__init__(stream)
        self.place = place

    def render(self) -> bytes | None:
        entries = self._stream.entries
        new = [e for e in entries[self.place.index :] if type(e) is str]
        self.place.index = len(entries)
        return "".join(new).encode() if new else None


def front_door(
    stream: TaskStream, complete: list[bool] | None = None
) -> tuple[asyncio.Task[None], list[bytes], list[object]]:
    """A front door's ``follow`` of ``stream`` with a pusher: its task, what it pushed, and
    the events it yielded. ``complete[n]`` says whether the n-th push completed (default: all)."""
    place = Place()
    reader = _Texts(stream, place)
    pushed: list[bytes] = []
    reader.attach(lambda chunk: pushed.append(chunk) or (complete or [True] * 64)[len(pushed) - 1])
    events: list[object] = []
    ticket = Ticket("t", "p", "s", stream, 0, 0, 8, {})

    async def consume() -> None:
        async for event in follow(None, ticket, pusher=reader, place=place):  # type: ignore[arg-type]
            events.append(event)

    return asyncio.create_task(consume()), pushed, events


class TestFollowPushes:
    async def test_tokens_published_while_caught_up_are_pushed_not_yielded(self) -> None:
        """``follow`` with a pusher: tokens go out through the push; a push that did not
        complete hands the writer its turn (an empty batch); the terminal is yielded."""
        stream = TaskStream()
        task, pushed, events = front_door(stream, [True, False, True])
        await asyncio.sleep(0)
        publish(stream, ["a"])
        publish(stream, ["b", "c"])  # this push is left unfinished
        await settle(lambda: events == [[]])
        publish(stream, ["d"])
        publish(stream, frame=("metrics", orjson.dumps({"n": 1})))
        publish(stream, frame=END)
        await asyncio.wait_for(task, 5)
        assert [b"a", b"bc", b"d"] == pushed
        assert [[], Finished(0, 3, False, "stop")] == events

    async def test_a_subscriber_and_a_front_door_both_get_pushes(self) -> None:
        """A task streamed to its front-door caller may also have a live subscriber: both are
        parked on the one transcript, and each gets every publish."""
        stream, server = TaskStream(), Server()
        task, outcomes = start(stream, server)
        await settle(lambda: len(server.messages) == 2)
        door, pushed, events = front_door(stream)
        await asyncio.sleep(0)
        publish(stream, ["a"])
        publish(stream, ["b"])
        assert [b"a", b"b"] == pushed
        assert encode_token("b", 1) == server.messages[-1]["body"]
        publish(stream, frame=END)
        await asyncio.wait_for(asyncio.gather(task, door), 5)
        assert [Outcome.COMPLETE] == outcomes
        assert [Finished(0, 3, False, "stop")] == events
