"""Drain and reload of a pool whose engine llama-orch does not launch: the operator drains it,
restarts the engine behind the same endpoint, and reloads it (a real ``llorch serve``, fake
llama.cpp engines as their own processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.test_engine_faults import (
    MODEL,
    _body,
    _engine_config,
    _frames,
    _until,
    fake_process,
)
from tests.support.serve_process import free_port, serve_process

HEALTH = "/v1/pools/engine/health"


def _llorch_reload(url: str) -> subprocess.CompletedProcess[str]:
    """``llorch pools reload engine``: no model, the pool keeps the one it serves."""
    env = {k: v for k, v in os.environ.items() if k not in ("LLORCH_TOKEN", "LLORCH_TOKEN_FILE")}
    command = [sys.executable, "-m", "llama_orch", "pools", "reload", "engine", "--url", url]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


async def _operation_ended(client: httpx.AsyncClient) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        health: dict[str, Any] = (await client.get(HEALTH)).json()
        op = health.get("last_operation") or {}
        return health if op.get("state") not in (None, "running") else None

    found: dict[str, Any] = await _until(ended, "the drain or reload to end")
    return found


class TestExternalPoolReload:
    @pytest.mark.timeout(120)
    async def test_a_drained_pool_serves_again_once_its_restarted_engine_passes(
        self, tmp_path: Path
    ) -> None:
        """Drain, stop the engine, reload while it is down (fails, named, still draining),
        start a new engine on the same port, reload again: Ready, and a task streams."""
        port = free_port()
        config = _engine_config(port, tmp_path / "artifacts")
        # The reload's wait for the gates: short, so that the failing one ends soon.
        config["engines"] = {"startup_timeout_ms": 1000}
        with contextlib.ExitStack() as stack:
            engine = stack.enter_context(fake_process(port, tokens_per_s=500.0))
            srv = stack.enter_context(serve_process(config, tmp_path))
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                await _until(
                    lambda: _health_says(client, ready=True), "the engine pool to be ready"
                )
                drain = await client.post("/v1/pools/engine/drain", json={"deadline_ms": 1000})
                assert 202 == drain.status_code
                await _operation_ended(client)
                engine.kill()
                engine.wait(timeout=10)

                down = await asyncio.to_thread(_llorch_reload, srv.url)
                assert 0 == down.returncode, down.stderr
                health = await _operation_ended(client)
                op = health["last_operation"]
                assert ("reload", "failed") == (op["kind"], op["state"]), op
                assert "reload again" in op["error"]
                assert (False, True) == (health["ready"], health["draining"]), health
                refused = await client.post("/v1/tasks", json=_body("llamacpp", MODEL))
                assert (503, "POOL_UNREADY", True) == (
                    refused.status_code,
                    refused.json()["code"],
                    refused.json()["retriable"],
                )

                other = await client.post(
                    "/v1/pools/engine/reload", json={"new_model_ref": "another-model"}
                )
                assert (400, "INVALID_PARAMS") == (other.status_code, other.json()["code"])
                assert "restart that engine" in other.json()["message"]

                with fake_process(port, tokens_per_s=500.0):
                    up = await asyncio.to_thread(_llorch_reload, srv.url)
                    assert 0 == up.returncode, up.stderr
                    health = await _operation_ended(client)
                    assert "done" == health["last_operation"]["state"], health
                    assert (True, False) == (health["ready"], health["draining"]), health
                    task = _body("llamacpp", MODEL, max_tokens=3, ctx=4096)
                    assert 202 == (await client.post("/v1/tasks", json=task)).status_code
                    frames = await _frames(client, task["task_id"])
        assert "end" == frames[-1][0], frames[-1]
        assert any(event == "token" for event, _ in frames)


async def _health_says(client: httpx.AsyncClient, *, ready: bool) -> bool:
    return bool((await client.get(HEALTH)).json()["ready"]) is ready
