"""``llorch status`` and ``llorch pools`` show engines' own text without letting it drive the
operator's terminal.

An engine reports its version, and its errors end up as a pool's last error; an upstream
OpenAI-compatible service is often someone else's machine. Escape sequences in that text
(clear the screen, retitle the window, recolour what follows) are shown escaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llama_orch.testing.fake_engines import FakeVllm
from tests.support.serve_process import serve_process
from tests.support.server import SIMULATED_GPUS

HOSTILE_VERSION = "0.6.3\x1b[2J\x1b]0;owned\x07\r\x9b31mred"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class HostileVllm(FakeVllm):
    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": HOSTILE_VERSION})


def llorch(command: str, url: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("LLORCH_TOKEN", "LLORCH_TOKEN_FILE")}
    return subprocess.run(
        [sys.executable, "-m", "llama_orch", command, "--url", url],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


class TestStatus:
    async def test_an_engine_version_cannot_drive_the_terminal(self, tmp_path: Path) -> None:
        async with HostileVllm(model="m-hostile") as engine:
            pool = {
                "id": "hostile",
                "engine": "vllm",
                "model": engine.model,
                "ctx": 4096,
                "devices": [0],
                "endpoint": engine.url,
                "provisioning": {"mode": "external"},
                "http": {"probe_timeout_ms": 1000},
            }
            config = {"gpus": SIMULATED_GPUS, "pools": [pool]}
            with contextlib.ExitStack() as stack:
                server = await asyncio.to_thread(
                    stack.enter_context, serve_process(config, tmp_path)
                )
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                    for _ in range(400):
                        pools = (await client.get("/v1/status")).json()["pool"]["pools"]
                        if pools[0]["state"] == "Ready":
                            break
                        await asyncio.sleep(0.05)
                shown = [
                    await asyncio.to_thread(llorch, command, server.url)
                    for command in ("status", "pools")
                ]
                await asyncio.to_thread(stack.close)
        for each in shown:
            # Bytes: a pipe's text mode would turn the carriage return into a newline.
            out = each.stdout.decode()
            assert 0 == each.returncode, each.stderr
            assert "vllm@0.6.3\\x1b[2J\\x1b]0;owned\\x07\\r\\x9b31mred" in out
            assert not _CONTROL.search(out), repr(out)
