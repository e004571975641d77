"""The fake engines as executables: the real engines' flags, model checks, the fake protocol."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import httpx
import pytest

from llama_orch.testing.fake_engines._gguf import GgufError, read_metadata
from tests.support.engines import fake_executable, tiny_gguf
from tests.support.serve_process import free_port

LAUNCH = [sys.executable, "-m", "llama_orch.testing.fake_engines.launch"]


async def _run(argv: list[str], env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


async def _get(url: str, deadline_s: float = 20.0) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        for _ in range(int(deadline_s / 0.05)):
            try:
                return await client.get(url)
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never answered")


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.terminate()
    return await asyncio.wait_for(proc.wait(), 20)


class TestLlamaServer:
    async def test_serves_props_from_its_flags(self, tmp_path: Path) -> None:
        """llama-server flags set the fake's slots and context; the GGUF name is its alias."""
        model = tiny_gguf(tmp_path)
        exe = fake_executable(tmp_path / "bin", "llama-server")
        port = free_port()
        proc = await _run(
            [
                str(exe),
                "-m",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "-c",
                "2048",
                "-np",
                "3",
                "--n-gpu-layers",
                "999",
                "--metrics",
            ]
        )
        try:
            props = (await _get(f"http://127.0.0.1:{port}/props")).json()
        finally:
            assert 0 == await _stop(proc)
        assert 3 == props["total_slots"]
        assert 2048 == props["default_generation_settings"]["n_ctx"]
        assert "tiny-sim" == props["model_alias"]
        assert "simulated" in props["build_info"]

    async def test_missing_model_exits_non_zero(self, tmp_path: Path) -> None:
        """A model path that does not exist fails the load, as in the real server."""
        proc = await _run([*LAUNCH, "llama-server", "-m", str(tmp_path / "no.gguf")])
        _, err = await proc.communicate()
        assert 1 == proc.returncode
        assert b"failed to load model" in err

    async def test_port_taken_exits_non_zero(self, tmp_path: Path) -> None:
        """A port another process holds makes the engine exit, naming the port."""
        model = tiny_gguf(tmp_path)
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            proc = await _run([*LAUNCH, "llama-server", "-m", str(model), "--port", str(port)])
            _, err = await proc.communicate()
        assert 1 == proc.returncode
        assert f"port: {port}".encode() in err

    async def test_fault_file_exit_at_start(self, tmp_path: Path) -> None:
        """The fault file scripts an exit before the engine binds."""
        faults = tmp_path / "faults"
        faults.write_text("exit_at_start")
        proc = await _run(
            [*LAUNCH, "llama-server", "-m", str(tiny_gguf(tmp_path))],
            {"FAKE_ENGINE_FAULTS": str(faults)},
        )
        await proc.communicate()
        assert 1 == proc.returncode


class TestOtherEngines:
    async def test_vllm_serve_uses_served_model_name(self, tmp_path: Path) -> None:
        """`vllm serve DIR --served-model-name NAME` serves NAME on /v1/models."""
        model_dir = tmp_path / "Qwen-tiny"
        model_dir.mkdir()
        port = free_port()
        proc = await _run(
            [
                *LAUNCH,
                "vllm",
                "serve",
                str(model_dir),
                "--port",
                str(port),
                "--served-model-name",
                "qwen",
                "--max-model-len",
                "1024",
            ]
        )
        try:
            models = (await _get(f"http://127.0.0.1:{port}/v1/models")).json()
        finally:
            await _stop(proc)
        assert ["qwen"] == [m["id"] for m in models["data"]]
        assert 1024 == models["data"][0]["max_model_len"]

    async def test_tgi_launcher_flags(self, tmp_path: Path) -> None:
        """text-generation-launcher's --model-id and --max-total-tokens reach /info."""
        model_dir = tmp_path / "tiny"
        model_dir.mkdir()
        port = free_port()
        proc = await _run(
            [
                *LAUNCH,
                "text-generation-launcher",
                "--model-id",
                str(model_dir),
                "--port",
                str(port),
                "--max-total-tokens",
                "2048",
                "--max-input-tokens",
                "1024",
            ]
        )
        try:
            info = (await _get(f"http://127.0.0.1:{port}/info")).json()
        finally:
            await _stop(proc)
        assert 2048 == info["max_total_tokens"]


class TestGguf:
    def test_rejects_a_file_that_is_not_gguf(self, tmp_path: Path) -> None:
        """A file without the GGUF magic is refused with a typed error."""
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(b"nope" * 8)
        with pytest.raises(GgufError):
            read_metadata(bad)
