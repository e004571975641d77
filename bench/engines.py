"""Launched engines: cold start to Ready, kill to Ready again, reload under load.

``python -m bench engines``. A ``llorch serve`` subprocess provisions the fake llama-server
(simulated) through the binary path from a local ``file://`` archive (no download time), launches
it and supervises it. Measured:

- cold start: engine process launch to replica Ready (the supervisor's ``preload`` event);
  target <= 1.5 s;
- kill -9 to Ready again, seen by a client polling health every 10 ms; target <= backoff + 1 s
  (backoff here: 200 ms, no jitter);
- reload wall time (POST reload to the placement switch, and to the old engine stopped) with a
  second small model, under a steady 10 req/s; target <= 10 s with zero failed tasks.

Clients address tasks by model; after the switch the old model is no longer served, so a
submission refused with 503 switches the client to the pool's new model (counted as
"redirected", not failed). Nothing here is asserted by tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from llama_orch.testing.fake_engines._gguf import write_minimal
from llama_orch.testing.fake_engines.release import engine_archive

KILLS = int(os.environ.get("BENCH_KILLS", "5"))
LOAD_RPS = 10.0
BACKOFF_MS = 200


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(workdir: Path, model: Path) -> dict[str, Any]:
    archive = workdir / "llama-b1.tar.gz"
    archive.write_bytes(engine_archive("llama-server"))
    checksum = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    pool = {
        "id": "bench",
        "engine": "llamacpp",
        "model": str(model),
        "devices": [0],
        "slots": 4,
        "ctx": 1024,
        "provisioning": {
            "mode": "binary",
            "binary": {"url": archive.as_uri(), "checksum": checksum},
            "env": {"FAKE_ENGINE_TOKENS_PER_S": "100"},
        },
        "http": {"probe_timeout_ms": 500, "retries": 0},
        "backoff": {"initial_ms": BACKOFF_MS, "max_ms": BACKOFF_MS, "jitter": False},
        "queue": {"capacity": 1024},
    }
    return {
        "gpus": {"simulated": [{"index": 0, "name": "bench (simulated)", "vram_mb": 24576}]},
        "catalog": {"root": str(workdir / "catalog")},
        "engines": {
            "cache_dir": str(workdir / "engines"),
            "run_dir": str(workdir / "run"),
            "restart_storm": {"failures": 100, "window_s": 60},
        },
        "pools": [pool],
    }


async def _health(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/v1/pools/bench/health")).json()
    return body


async def _until(client: httpx.AsyncClient, predicate: Any, timeout_s: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(httpx.TransportError):
            if predicate(await _health(client)):
                return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise RuntimeError("the pool never reached the awaited state")


def _pid(health: dict[str, Any]) -> int | None:
    replicas = health["metrics"]["replicas"]
    process = replicas[-1].get("process") or {}
    pid = process.get("pid")
    return int(pid) if pid else None


class Load:
    """Steady submissions at ``LOAD_RPS``, each streamed to its end."""

    def __init__(self, client: httpx.AsyncClient, model: str) -> None:
        self.client = client
        self.model = model
        self.ended = self.failed = self.redirected = 0
        self.errors: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            task = asyncio.create_task(self._one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(1 / LOAD_RPS)
        await asyncio.gather(*self._tasks)

    async def _one(self) -> None:
        body = {
            "task_id": str(uuid.uuid4()),
            "session_id": str(uuid.uuid4()),
            "workload": "completion",
            "model_ref": self.model,
            "engine": "llamacpp",
            "ctx": 512,
            "priority": "interactive",
            "max_tokens": 20,
            "deadline_ms": 60_000,
            "prompt": "hello",
        }
        response = await self.client.post("/v1/tasks", json=body)
        if response.status_code == 503:
            self.redirected += 1
            self.model = str((await _health(self.client))["model_id"])
            return
        if response.status_code != 202:
            self.failed += 1
            self.errors.append(response.text[:200])
            return
        last = ""
        async with self.client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    last = line[7:]
        if last == "end":
            self.ended += 1
        else:
            self.failed += 1
            self.errors.append(last)


def _preload_ms(log: Path) -> list[int]:
    values = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("action") == "preload":
                values.append(int(event["duration_ms"]))
    return values


async def measure(url: str, log: Path, model_b: Path) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await _until(client, lambda h: h["ready"])
        kills = []
        for _ in range(KILLS):
            health = await _health(client)
            pid = _pid(health)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            kills.append(await _until(client, lambda h, p=pid: h["ready"] and _pid(h) != p))
        load = Load(client, str((await _health(client))["model_id"]))
        stop = asyncio.Event()
        runner = asyncio.create_task(load.run(stop))
        await asyncio.sleep(2.0)
        started = time.monotonic()
        response = await client.post("/v1/pools/bench/reload", json={"new_model_ref": str(model_b)})
        assert response.status_code == 202, response.text
        await _until(client, lambda h: (h.get("last_operation") or {}).get("state") == "done")
        wall = time.monotonic() - started
        op = (await _health(client))["last_operation"]
        await asyncio.sleep(2.0)
        stop.set()
        await runner
    return {
        "cold_start_ms": _preload_ms(log)[0],
        "restart_preload_ms": _preload_ms(log)[1 : 1 + KILLS],
        "kill_to_ready_ms": [round(k * 1000) for k in kills],
        "reload_switch_ms": op["switch_ms"],
        "reload_done_ms": round(wall * 1000),
        "load": {
            "ended": load.ended,
            "failed": load.failed,
            "redirected": load.redirected,
            "errors": load.errors[:3],
        },
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        workdir = Path(tmp)
        model_a = write_minimal(workdir / "a.gguf", {"general.name": "bench-a"})
        model_b = write_minimal(workdir / "b.gguf", {"general.name": "bench-b"})
        config = workdir / "bench.yaml"
        config.write_text(yaml.safe_dump(_config(workdir, model_a), sort_keys=False))
        port = _port()
        log = workdir / "orch.log"
        env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
        command = [sys.executable, "-m", "llama_orch", "serve", "--config", str(config)]
        command += ["--bind", f"127.0.0.1:{port}"]
        with log.open("wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            result = asyncio.run(measure(f"http://127.0.0.1:{port}", log, model_b))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    kills = result["kill_to_ready_ms"]
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(
        f"cold start {result['cold_start_ms']} ms (target <= 1500); kill -> Ready median "
        f"{statistics.median(kills):.0f} ms, max {max(kills)} ms (target <= {BACKOFF_MS} + 1000); "
        f"reload switch {result['reload_switch_ms']} ms, done {result['reload_done_ms']} ms "
        f"(target <= 10000), failed tasks {result['load']['failed']}"
    )
