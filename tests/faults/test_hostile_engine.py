"""A hostile OpenAI-compatible engine behind ``llorch serve``: oversized frames, endless heads,
odd but valid SSE, error answers in unexpected shapes. Every task must end with one typed frame
naming the engine, the slot must be free for the next task, the server's memory must stay
bounded, and its log must hold no traceback."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import SIMULATED_GPUS, sse_events, task_body

MODEL = "hostile-model"
MIB = 1 << 20

#: A script writes one generation answer (head and body) and returns; the connection closes.
Script = Callable[[asyncio.StreamWriter], Awaitable[None]]

_MODELS = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


def _chunk(text: str) -> bytes:
    event = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(event) + b"\n\n"


_FINISH = (
    b"data: "
    + orjson.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    + b"\n\ndata: [DONE]\n\n"
)


def sse_head(extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
        + extra
        + b"\r\n"
    )


class HostileEngine:
    """An OpenAI-compatible engine (simulated) on a loopback port: ``/v1/models`` answers
    properly, each generation request is answered by ``script`` (the next ones, once it was
    used, by a well-behaved short stream)."""

    def __init__(self, script: Script | None, models: Script | None = None) -> None:
        self.script: Script | None = script
        #: Answers ``GET /v1/models`` instead of the proper list, when set.
        self.models = models
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HostileEngine:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Python 3.11's Server.wait_closed does not wait for handlers; they end with the loop.

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Canceled when the test's loop ends: a handler still writing simply stops.
        with contextlib.suppress(
            ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError
        ):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                if head.startswith(b"GET /v1/models") and self.models is not None:
                    await self.models(writer)
                elif head.startswith(b"GET /v1/models"):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(_MODELS), _MODELS)
                    )
                else:
                    script, self.script = self.script, None
                    await (script or _well_behaved)(writer)
                await writer.drain()
            finally:
                writer.close()


async def _well_behaved(writer: asyncio.StreamWriter) -> None:
    writer.write(sse_head() + _chunk("ok") + _FINISH)


def _config(endpoint: str, artifacts: Path, **pool: Any) -> dict[str, Any]:
    engine_pool = {
        "id": "engine",
        "engine": "openai",
        "model": MODEL,
        "endpoint": endpoint,
        "slots": 1,
        "provisioning": {"mode": "external"},
        "backoff": {"initial_ms": 50, "max_ms": 200},
        "circuit_breaker": {"failures": 100, "window_s": 60, "cooldown_s": 1},
        **pool,
    }
    return {
        "gpus": SIMULATED_GPUS,
        "pools": [engine_pool],
        "server": {"artifacts_dir": str(artifacts)},
    }


async def _frames(client: httpx.AsyncClient, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [frame async for frame in sse_events(client, task_id)]


async def _ready(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (await client.get("/v1/pools/engine/health")).json().get("ready"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the engine pool never became ready")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@contextlib.asynccontextmanager
async def _serving(
    script: Script | None, tmp_path: Path, **pool: Any
) -> AsyncIterator[tuple[ServeProcess, httpx.AsyncClient, HostileEngine]]:
    async with HostileEngine(script) as engine:
        config = _config(engine.url, tmp_path / "artifacts", **pool)
        with serve_process(config, tmp_path) as srv:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
                await _ready(client)
                yield srv, client, engine


async def _one_task(
    script: Script, tmp_path: Path, **pool: Any
) -> tuple[list[tuple[str, dict[str, Any]]], str, float]:
    """Run one task against ``script``, then a second one (it must end normally); the first
    task's frames, the server's log and its peak resident memory in MiB."""
    async with _serving(script, tmp_path, **pool) as (srv, client, _):
        body = task_body(model=MODEL, engine="openai", max_tokens=8)
        assert 202 == (await client.post("/v1/tasks", json=body)).status_code
        frames = await _frames(client, body["task_id"])
        # A failed stream may set the replica back to unready until its next health probe.
        await _ready(client)
        again = task_body(model=MODEL, engine="openai", max_tokens=8)
        answer = await client.post("/v1/tasks", json=again)
        assert 202 == answer.status_code, answer.text
        after = await _frames(client, again["task_id"])
        assert "end" == after[-1][0], f"the next task did not run: {after}"
        peak = _rss_mib(srv.process.pid)
    return frames, srv.log_path.read_text(), peak


def _assert_typed_error(frames: list[tuple[str, dict[str, Any]]], log: str) -> dict[str, Any]:
    kinds = [event for event, _ in frames]
    assert 1 == sum(k in ("end", "error") for k in kinds), kinds
    event, error = frames[-1]
    assert "error" == event, frames[-1]
    assert "openai" == error["engine"], error
    assert "Traceback" not in log, log[-3000:]
    return error


#: What an endless answer sends at most before it stops (and keeps the connection open).
ENDLESS = 256 * MIB


async def _send_endlessly(writer: asyncio.StreamWriter, first: bytes, piece: bytes) -> None:
    writer.write(first)
    for _ in range(ENDLESS // len(piece)):
        writer.write(piece)
        await writer.drain()
    await asyncio.sleep(60)


async def _endless_line(writer: asyncio.StreamWriter) -> None:
    """One ``data:`` line that never ends."""
    await _send_endlessly(writer, sse_head() + b"data: {", b"y" * (256 * 1024))


async def _endless_head(writer: asyncio.StreamWriter) -> None:
    """A response head that never ends."""
    first = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    await _send_endlessly(writer, first, b"x-pad: " + b"z" * 8000 + b"\r\n")


async def _endless_error_body(writer: asyncio.StreamWriter) -> None:
    """A 500 whose body never ends (chunked)."""
    piece = b"e" * (256 * 1024)
    first = b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n"
    await _send_endlessly(writer, first, b"%x\r\n%s\r\n" % (len(piece), piece))


class TestBoundedMemory:
    """What an engine sends without end must not all be held; the task fails, typed."""

    @pytest.mark.timeout(120)
    @pytest.mark.parametrize(
        "script", [_endless_line, _endless_head, _endless_error_body], ids=["line", "head", "500"]
    )
    async def test_an_endless_answer_is_cut_off(self, script: Script, tmp_path: Path) -> None:
        frames, log, peak_mib = await _one_task(script, tmp_path)
        print(f"peak resident memory {peak_mib:.0f} MiB; {frames[-1]}")
        error = _assert_typed_error(frames, log)
        assert error["code"] in ("WORKER_RESET", "INTERNAL", "POOL_UNAVAILABLE"), error
        # The engine offered 256 MiB; the server held a bounded part of it.
        assert peak_mib < 200, peak_mib


async def _endless_embedding(writer: asyncio.StreamWriter) -> None:
    """An embeddings answer whose one vector never ends (chunked JSON floats)."""
    piece = b"0.0123456789," * 20_000
    first = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    start = b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":['
    await _send_endlessly(
        writer, first + b"%x\r\n%s\r\n" % (len(start), start), b"%x\r\n%s\r\n" % (len(piece), piece)
    )


class TestBoundedEmbeddings:
    @pytest.mark.timeout(120)
    async def test_an_endless_embedding_answer_is_cut_off(self, tmp_path: Path) -> None:
        """An embeddings answer used to be read whole, so an engine sending without end grew
        the server without bound. It is cut off past its bound (here 16 MiB and a quarter:
        one text per call) with INTERNAL naming the engine; the slot serves the next task."""
        workloads = {"supported_workloads": ["completion", "embedding"], "embedding_batch": 1}
        async with _serving(_endless_embedding, tmp_path, **workloads) as (srv, client, _):
            answer = await client.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
            await _ready(client)
            body = task_body(model=MODEL, engine="openai", max_tokens=8)
            assert 202 == (await client.post("/v1/tasks", json=body)).status_code
            after = await _frames(client, body["task_id"])
            peak_mib = _rss_mib(srv.process.pid)
        log = srv.log_path.read_text()
        print(f"peak resident memory {peak_mib:.0f} MiB; {answer.text[:300]}")
        assert 500 == answer.status_code, answer.text
        message = answer.json()["error"]["message"]
        assert "openai at http://127.0.0.1" in message, message
        assert "the answer passed 16 MiB, the bound for 1 text" in message, message
        assert "end" == after[-1][0], after[-1]
        assert "Traceback" not in log, log[-3000:]
        assert peak_mib < 200, peak_mib


async def _past_max_tokens(writer: asyncio.StreamWriter) -> None:
    """An engine that ignores max_tokens (8) and streams 40 tokens, then more without end."""
    writer.write(sse_head() + b"".join(_chunk(f"t{n} ") for n in range(40)))
    with contextlib.suppress(ConnectionError):
        for n in range(40, 100_000):
            writer.write(_chunk(f"t{n} "))
            await writer.drain()
            await asyncio.sleep(0.01)


class TestEngineOverruns:
    @pytest.mark.timeout(120)
    async def test_tokens_past_max_tokens_are_cut(self, tmp_path: Path) -> None:
        """The client asked for 8 tokens: it gets 8 and an end for length, however many the
        engine sends."""
        frames, log, _ = await _one_task(_past_max_tokens, tmp_path)
        tokens = [data["t"] for event, data in frames if event == "token"]
        assert [f"t{n} " for n in range(8)] == tokens
        assert ("end", 8) == (frames[-1][0], frames[-1][1]["tokens_out"]), frames[-1]
        assert "Traceback" not in log


def _line_endings(ending: bytes) -> Script:
    """A stream of three tokens whose lines end with ``ending`` (valid SSE for CR, LF and
    CRLF), written one line per write so endings also fall at write boundaries."""

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head())
        frames = b"".join(_chunk(f"t{n} ") for n in range(3)) + _FINISH
        for line in frames.split(b"\n"):
            writer.write(line)
            await writer.drain()
            writer.write(ending)
            await writer.drain()

    return script


class TestLineEndings:
    @pytest.mark.timeout(120)
    @pytest.mark.parametrize("ending", [b"\r", b"\r\n"], ids=["cr", "crlf"])
    async def test_every_sse_line_ending_streams(self, ending: bytes, tmp_path: Path) -> None:
        """An engine ending its SSE lines with a lone CR or with CRLF streams like one
        using LF: every token, then a normal end."""
        frames, log, _ = await _one_task(_line_endings(ending), tmp_path)
        tokens = [data["t"] for event, data in frames if event == "token"]
        assert ["t0 ", "t1 ", "t2 "] == tokens
        assert ("end", 3) == (frames[-1][0], frames[-1][1]["tokens_out"]), frames[-1]
        assert "Traceback" not in log


def _answer(data: bytes) -> Script:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(data)

    return script


def _json_answer(document: dict[str, Any]) -> Script:
    body = orjson.dumps(document)
    return _answer(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (len(body), body)
    )


async def _errors_of(scripts: list[Script], tmp_path: Path) -> list[dict[str, Any]]:
    """One task per script against one server; each task's error frame (each must end so)."""
    errors = []
    async with _serving(None, tmp_path) as (srv, client, engine):
        for script in scripts:
            engine.script = script
            await _ready(client)
            body = task_body(model=MODEL, engine="openai", max_tokens=8)
            assert 202 == (await client.post("/v1/tasks", json=body)).status_code
            frames = await _frames(client, body["task_id"])
            errors.append(_assert_typed_error(frames, srv.log_path.read_text()))
    return errors


class TestNotAStream:
    """A 200 answer that is no event stream says what came instead, typed by what it means."""

    @pytest.mark.timeout(120)
    async def test_json_or_compressed_answers(self, tmp_path: Path) -> None:
        rate_limited = {"error": {"message": "quota used up", "type": "rate_limit", "code": 429}}
        whole = {"object": "chat.completion", "choices": [{"message": {"content": "hi"}}]}
        gzipped = sse_head(b"content-encoding: gzip\r\n") + gzip.compress(_chunk("a") + _FINISH)
        cases = [_json_answer(rate_limited), _json_answer(whole), _answer(gzipped)]
        errors = await _errors_of(cases, tmp_path)
        assert ("POOL_UNAVAILABLE", True) == (errors[0]["code"], errors[0]["retriable"])
        assert "quota used up" in errors[0]["message"]
        assert ("INTERNAL", False) == (errors[1]["code"], errors[1]["retriable"])
        assert "content-type application/json, not an event stream" in errors[1]["message"]
        assert "INTERNAL" == errors[2]["code"]
        assert "content-encoding gzip" in errors[2]["message"]


class TestProbes:
    @pytest.mark.timeout(120)
    async def test_an_endless_probe_answer_is_cut_off(self, tmp_path: Path) -> None:
        """An engine whose model list never ends: the probe fails within its timeout, the pool
        says why it is unready, and the server holds a bounded part of what was sent."""
        async with HostileEngine(None, models=_endless_error_body) as engine:
            config = _config(engine.url, tmp_path / "artifacts", http={"probe_timeout_ms": 1000})
            with serve_process(config, tmp_path) as srv:
                async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
                    health: dict[str, Any] = {}
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline and not _last_error(health):
                        health = (await client.get("/v1/pools/engine/health")).json()
                        await asyncio.sleep(0.1)
                    peak_mib = _rss_mib(srv.process.pid)
            log = srv.log_path.read_text()
        print(f"peak resident memory {peak_mib:.0f} MiB; {_last_error(health)}")
        assert not health["ready"]
        assert "Traceback" not in log
        assert peak_mib < 200, peak_mib


def _last_error(health: dict[str, Any]) -> str | None:
    replicas = health.get("metrics", {}).get("replicas", [])
    return replicas[0]["last_error"] if replicas else None


class TestRetryAfter:
    @pytest.mark.timeout(120)
    async def test_an_absurd_retry_after_is_bounded(self, tmp_path: Path) -> None:
        """An engine's 429 with a Retry-After past any integer the wire can carry still ends the
        task (and the front door's request) with POOL_UNAVAILABLE, its advice capped at a day;
        an HTTP-date Retry-After counts from now."""
        huge = b"9" * 30
        date = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=120), True)
        answers = []
        async with _serving(None, tmp_path) as (srv, client, engine):
            for value in (huge, date.encode()):
                engine.script = _answer(
                    b"HTTP/1.1 429 Too Many Requests\r\nretry-after: %s\r\n"
                    b"content-length: 4\r\n\r\nslow" % value
                )
                await _ready(client)
                body = task_body(model=MODEL, engine="openai", max_tokens=8)
                assert 202 == (await client.post("/v1/tasks", json=body)).status_code
                answers.append((await _frames(client, body["task_id"]))[-1][1])
            engine.script = _answer(
                b"HTTP/1.1 429 Too Many Requests\r\nretry-after: %s\r\n"
                b"content-length: 4\r\n\r\nslow" % huge
            )
            await _ready(client)
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            front = await client.post("/v1/chat/completions", json=chat)
            log = srv.log_path.read_text()
        assert "Traceback" not in log
        assert ("POOL_UNAVAILABLE", 86_400_000) == (
            answers[0]["code"],
            answers[0]["retry_after_ms"],
        )
        assert 60_000 < answers[1]["retry_after_ms"] <= 120_000, answers[1]
        assert (503, "86400") == (front.status_code, front.headers["retry-after"])


class TestOddStatuses:
    @pytest.mark.timeout(120)
    async def test_switching_protocols_and_redirects(self, tmp_path: Path) -> None:
        """An engine that switches protocols (101) or redirects (301) ends the task with a typed
        error saying so, and nothing crashes in the server's connection code."""
        switch = (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
            b"connection: upgrade\r\n\r\nxx"
        )
        moved = (
            b"HTTP/1.1 301 Moved Permanently\r\nlocation: https://elsewhere:8443/v1/chat/completions"
            b"\r\ncontent-length: 0\r\n\r\n"
        )
        errors = await _errors_of([_answer(switch), _answer(moved)], tmp_path)
        assert ("WORKER_RESET", True) == (errors[0]["code"], errors[0]["retriable"])
        assert "switched protocols" in errors[0]["message"]
        assert ("INTERNAL", False) == (errors[1]["code"], errors[1]["retriable"])
        assert "https://elsewhere:8443/v1/chat/completions" in errors[1]["message"]


class TestEngineErrorText:
    @pytest.mark.timeout(120)
    async def test_an_engines_long_error_message_is_quoted_cut(self, tmp_path: Path) -> None:
        """An engine's in-stream error (or JSON error answer) with a message of a MiB: the task's
        error frame quotes its start, and the log does not carry the whole of it."""
        text = "overloaded " + "x" * MIB
        event = b"data: " + orjson.dumps({"error": {"message": text, "code": 503}}) + b"\n\n"
        scripts = [_answer(sse_head() + _chunk("a") + event), _json_answer({"error": text})]
        errors = await _errors_of(scripts, tmp_path)
        log_size = (tmp_path / "serve.log").stat().st_size
        for error in errors:
            assert "overloaded xxx" in error["message"]
            assert len(error["message"]) < 1000, len(error["message"])
        assert ("POOL_UNAVAILABLE", "INTERNAL") == (errors[0]["code"], errors[1]["code"])
        assert log_size < MIB, log_size
