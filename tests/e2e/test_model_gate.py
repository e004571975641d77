"""The model gate of an external OpenAI-compatible pool: an engine that lists its models but not
the pool's is not Ready, says which model it serves instead, and turns Ready by itself once it
serves the pool's model (a real ``llorch serve``, the fake OpenAI engine as its own process)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx
import pytest

from tests.faults.test_engine_faults import (
    _body,
    _engine_config,
    _frames,
    _until,
    fake_engine_process,
)
from tests.support.serve_process import free_port, serve_process

MODEL = "gate-model"
KEY = "sk-upstream-gate-0123456789abcdef"
HEALTH = "/v1/pools/upstream/health"


def fake_openai(port: int, model: str) -> contextlib.AbstractContextManager[Popen[str]]:
    """The fake OpenAI engine serving ``model`` on ``port``, as its own process."""
    return fake_engine_process("openai", port, "--model", model, "--api-key", KEY)


def _config(port: int, artifacts: Path) -> dict[str, Any]:
    """An external openai pool asking for ``MODEL`` at ``port`` (beside a mock pool)."""
    config = _engine_config(port, artifacts)
    config["pools"][0].update(
        id="upstream", engine="openai", model=MODEL, api_key_env="UPSTREAM_KEY"
    )
    return config


class TestModelGate:
    @pytest.mark.timeout(120)
    async def test_an_engine_serving_another_model_keeps_the_pool_unready_until_it_serves(
        self, tmp_path: Path
    ) -> None:
        port = free_port()
        env = {"UPSTREAM_KEY": KEY}
        with contextlib.ExitStack() as stack:
            wrong = stack.enter_context(fake_openai(port, "other-model"))
            srv = stack.enter_context(
                serve_process(_config(port, tmp_path / "artifacts"), tmp_path, environ=env)
            )
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:

                async def named() -> dict[str, Any] | None:
                    health: dict[str, Any] = (await client.get(HEALTH)).json()
                    return health if "other-model" in (health.get("last_error") or "") else None

                health = await _until(named, "the model gate to name the served model")
                assert health["ready"] is False, health
                error = health["last_error"]
                assert MODEL in error and "other-model" in error, error

                refused = await client.post("/v1/tasks", json=_body("openai", MODEL))
                assert (503, "POOL_UNREADY") == (
                    refused.status_code,
                    refused.json()["code"],
                ), refused.json()
                assert "other-model" in refused.json()["message"]

                wrong.kill()
                wrong.wait(timeout=10)
                with fake_openai(port, MODEL):

                    async def ready() -> bool:
                        return bool((await client.get(HEALTH)).json()["ready"])

                    await _until(ready, "the pool to turn Ready once the engine serves it")
                    task = _body("openai", MODEL, max_tokens=3, ctx=4096)
                    assert 202 == (await client.post("/v1/tasks", json=task)).status_code
                    frames = await _frames(client, task["task_id"])
        assert "end" == frames[-1][0], frames[-1]
        assert any(event == "token" for event, _ in frames)
