"""Engine faults end to end: a fake engine process killed mid-stream, an engine that stalls, and
engines that send garbage or truncated frames. The server must answer each with a typed error
frame, keep its other pools serving, and keep queued work."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from llama_orch.testing.fake_engines import Behaviour, start_fake
from tests.support.serve_process import free_port, serve_process
from tests.support.server import (
    SIMULATED_GPUS,
    config_of,
    mock_pool,
    running_server,
    task_body,
)

MODEL = "fault-model"


@contextlib.contextmanager
def fake_process(port: int, *, tokens_per_s: float) -> Iterator[subprocess.Popen[str]]:
    """A fake llama.cpp as its own process on ``port`` (so that it can be killed)."""
    args = ["--model", MODEL, "--slots", "1", "--batch", "1", "--tokens-per-s", str(tokens_per_s)]
    with fake_engine_process("llamacpp", port, *args) as process:
        yield process


@contextlib.contextmanager
def fake_engine_process(kind: str, port: int, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A fake engine of ``kind`` as its own process on ``port``, started with ``args``."""
    command = [sys.executable, "-m", "llama_orch.testing.fake_engines", kind]
    command += ["--port", str(port), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    with process.stdout:
        try:
            process.stdout.readline()
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def _body(engine: str, model: str, **overrides: Any) -> dict[str, Any]:
    return task_body(model=model, engine=engine, **overrides)


async def _frames(client: httpx.AsyncClient, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    frames = []
    async with aconnect_sse(client, "GET", f"/v1/tasks/{task_id}/stream") as source:
        async for sse in source.aiter_sse():
            frames.append((sse.event, orjson.loads(sse.data)))
    return frames


async def _until(probe: Any, what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _engine_config(port: int, artifacts: Path) -> dict[str, Any]:
    engine_pool = {
        "id": "engine",
        "engine": "llamacpp",
        "model": MODEL,
        "ctx": 4096,
        "devices": [0],
        "slots": 1,
        "endpoint": f"http://127.0.0.1:{port}",
        "provisioning": {"mode": "external"},
        "backoff": {"initial_ms": 50, "max_ms": 200},
        "circuit_breaker": {"failures": 100, "window_s": 60, "cooldown_s": 1},
    }
    return {
        "gpus": SIMULATED_GPUS,
        "pools": [engine_pool, mock_pool("other", "m0", devices=[1])],
        "server": {"artifacts_dir": str(artifacts)},
    }


async def _kill_mid_stream(
    client: httpx.AsyncClient, engine: subprocess.Popen[str], task_id: str
) -> tuple[list[tuple[str, dict[str, Any]]], float]:
    """Read ``task_id``'s stream, kill the engine at its first token; (frames, seconds from the
    kill to the terminal frame)."""
    frames: list[tuple[str, dict[str, Any]]] = []
    killed_at = 0.0
    async with aconnect_sse(client, "GET", f"/v1/tasks/{task_id}/stream") as source:
        async for sse in source.aiter_sse():
            frames.append((sse.event, orjson.loads(sse.data)))
            if sse.event == "token" and not killed_at:
                engine.kill()
                killed_at = time.monotonic()
    return frames, time.monotonic() - killed_at


class TestEngineHungAtStart:
    async def test_a_hung_engine_does_not_hold_the_servers_start(self, tmp_path: Path) -> None:
        """An engine that accepts connections and never answers: its first probe would take
        three 20 s probe timeouts. The server serves meanwhile (the 20 s start-up limit of
        ``serve_process``), the other pool runs tasks, and the hung pool is unready, said so."""
        with socket.socket() as hung:
            hung.bind(("127.0.0.1", 0))
            hung.listen(8)  # the kernel completes connections; nothing ever reads them
            config = _engine_config(hung.getsockname()[1], tmp_path / "artifacts")
            config["pools"][0]["http"] = {"probe_timeout_ms": 20_000}
            with serve_process(config, tmp_path, start_timeout_s=20) as srv:
                async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                    body = _body("mock", "m0")
                    assert 202 == (await client.post("/v1/tasks", json=body)).status_code
                    assert "end" == (await _frames(client, body["task_id"]))[-1][0]
                    health = (await client.get("/v1/pools/engine/health")).json()
                    assert health["ready"] is False, health
                log = srv.log_path.read_text()
        assert '"action":"first-probe"' in log
        assert "engine/r0" in log


class TestEngineDies:
    @pytest.mark.timeout(120)
    async def test_running_task_gets_a_retriable_error_and_other_pools_serve(
        self, tmp_path: Path
    ) -> None:
        """Killing the engine mid-stream ends the running task with a retriable error frame at
        once (the delay is printed), and the mock pool keeps serving."""
        port = free_port()
        config = _engine_config(port, tmp_path / "artifacts")
        with (
            fake_process(port, tokens_per_s=50.0) as engine,
            serve_process(config, tmp_path) as srv,
        ):
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                await _until(lambda: _ready(client), "the engine pool to be ready")
                running = _body("llamacpp", MODEL, max_tokens=2000, ctx=4096)
                assert 202 == (await client.post("/v1/tasks", json=running)).status_code
                frames, error_after_s = await _kill_mid_stream(client, engine, running["task_id"])
                other = _body("mock", "m0", max_tokens=3)
                assert 202 == (await client.post("/v1/tasks", json=other)).status_code
                other_frames = await _frames(client, other["task_id"])
        event, error = frames[-1]
        assert ("error", True) == (event, error["retriable"]), frames[-1]
        # The code tells a noticed death from a hang, not the time it took: a stream the
        # server did not see break ends only at the 30 s idle watchdog, with DECODE_TIMEOUT.
        assert error["code"] in ("WORKER_RESET", "POOL_UNAVAILABLE")
        print(f"error frame {error_after_s * 1000:.0f} ms after the engine was killed")
        assert "end" == other_frames[-1][0]

    @pytest.mark.timeout(120)
    async def test_queued_task_is_served_after_recovery(self, tmp_path: Path) -> None:
        """A task queued when the engine dies is kept, and served once the engine is back."""
        port = free_port()
        config = _engine_config(port, tmp_path / "artifacts")
        with (
            fake_process(port, tokens_per_s=50.0) as engine,
            serve_process(config, tmp_path) as srv,
        ):
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                await _until(lambda: _ready(client), "the engine pool to be ready")
                running = _body("llamacpp", MODEL, max_tokens=2000, ctx=4096)
                queued = _body("llamacpp", MODEL, max_tokens=3, ctx=4096, deadline_ms=600_000)
                assert 202 == (await client.post("/v1/tasks", json=running)).status_code
                assert 202 == (await client.post("/v1/tasks", json=queued)).status_code
                await _kill_mid_stream(client, engine, running["task_id"])
                with fake_process(port, tokens_per_s=500.0):
                    queued_frames = await _frames(client, queued["task_id"])
        assert "end" == queued_frames[-1][0], queued_frames[-1]


class TestEngineMisbehaves:
    async def run_one(self, behaviour: Behaviour, **pool: Any) -> list[tuple[str, Any]]:
        async with start_fake("llamacpp", behaviour=behaviour, model=MODEL) as fake:
            engine_pool = {
                "id": "engine",
                "engine": "llamacpp",
                "model": MODEL,
                "ctx": 4096,
                "devices": [0],
                "slots": 1,
                "endpoint": fake.url,
                "provisioning": {"mode": "external"},
                "backoff": {"initial_ms": 1, "max_ms": 10},
                **pool,
            }
            async with running_server(config_of(engine_pool)) as srv:
                await _until(
                    lambda: _ready(srv.client), "the engine pool to be ready", timeout_s=15
                )
                body = _body("llamacpp", MODEL, max_tokens=8)
                assert 202 == (await srv.submit(body)).status_code
                frames = await srv.stream(body["task_id"])
                behaviour.stall_after = behaviour.malformed_after = behaviour.close_after = None
                again = _body("llamacpp", MODEL, max_tokens=2)
                assert 202 == (await srv.submit(again)).status_code
                after = await srv.stream(again["task_id"])
        assert "end" == after[-1][0], "the server did not serve the next task"
        return frames

    async def test_stall_trips_the_watchdog(self) -> None:
        """An engine that goes silent mid-stream is cut off with DECODE_TIMEOUT after idle_ms."""
        frames = await self.run_one(
            Behaviour(stall_after=2, tokens_per_s=200.0), timeouts={"idle_ms": 300}
        )
        assert ("error", "DECODE_TIMEOUT") == (frames[-1][0], frames[-1][1]["code"])

    @pytest.mark.parametrize(
        "behaviour",
        [Behaviour(malformed_after=2), Behaviour(close_after=2)],
        ids=["garbage", "truncated"],
    )
    async def test_bad_frames_are_a_typed_error(self, behaviour: Behaviour) -> None:
        """Garbage or a cut-off stream ends the task with one typed error frame, no crash."""
        frames = await self.run_one(behaviour)
        kinds = [event for event, _ in frames]
        assert 1 == sum(k in ("end", "error") for k in kinds)
        assert "error" == kinds[-1]
        assert frames[-1][1]["code"] in ("WORKER_RESET", "INTERNAL", "POOL_UNAVAILABLE")
        assert "Traceback" not in frames[-1][1]["message"]


async def _ready(client: httpx.AsyncClient) -> bool:
    return bool((await client.get("/v1/pools/engine/health")).json()["ready"])
