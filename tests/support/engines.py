"""Launchable fake engines on disk: executables named like the real ones (simulated).

``fake_executable(dir, "llama-server")`` writes ``dir/llama-server``, a shell script that runs
``python -m llama_orch.testing.fake_engines.launch llama-server "$@"`` with this interpreter, so a
provisioner can install, build or run it exactly where the real binary would be.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tarfile
from pathlib import Path

import httpx

from llama_orch.testing.fake_engines._gguf import write_minimal
from llama_orch.testing.fake_engines.release import engine_archive, fake_script

PROGRAMS = {
    "llamacpp": "llama-server",
    "vllm": "vllm",
    "tgi": "text-generation-launcher",
    "triton": "tritonserver",
}


def fake_executable(directory: Path, program: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / program
    path.write_text(fake_script(program))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def tiny_gguf(directory: Path, name: str = "tiny-sim") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return write_minimal(
        directory / f"{name}.gguf", {"general.architecture": "llama", "general.name": name}
    )


def evil_archive(kind: str) -> bytes:
    """A tar.gz that tries to escape its install dir: ``dotdot``, ``absolute`` or ``link``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        if kind == "link":
            info = tarfile.TarInfo("engine/bin/llama-server")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tf.addfile(info)
        else:
            name = "../escape.sh" if kind == "dotdot" else "/tmp/escape.sh"
            data = b"#!/bin/sh\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def environ_with(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


__all__ = ["engine_archive", "evil_archive", "fake_executable", "fake_script", "tiny_gguf"]


async def engine_healthy(url: str) -> None:
    """Until the engine at ``url`` answers its health route with 200 (about 30 s at most)."""
    async with httpx.AsyncClient(trust_env=False) as client:
        for _ in range(600):
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never turned healthy")
