"""Launchable fake engines on disk: executables named like the real ones (simulated).

``fake_executable(dir, "llama-server")`` writes ``dir/llama-server``, a shell script that runs
``python -m llama_orch.testing.fake_engines.launch llama-server "$@"`` with this interpreter, so a
provisioner can install, build or run it exactly where the real binary would be.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

from llama_orch.testing.fake_engines._gguf import write_minimal

PROGRAMS = {
    "llamacpp": "llama-server",
    "vllm": "vllm",
    "tgi": "text-generation-launcher",
    "triton": "tritonserver",
}


def fake_script(program: str) -> str:
    return (
        "#!/bin/sh\n"
        "# simulated engine: the real program's flags, the fake protocol, no inference\n"
        f'exec "{sys.executable}" -m llama_orch.testing.fake_engines.launch {program} "$@"\n'
    )


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


def engine_archive(program: str, *, fmt: str = "tar.gz", top: str = "engine-b1") -> bytes:
    """An engine release archive holding ``top/bin/<program>`` (the fake, executable)."""
    script = fake_script(program).encode()
    buf = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            info = zipfile.ZipInfo(f"{top}/bin/{program}")
            info.external_attr = (0o755 | stat.S_IFREG) << 16
            zf.writestr(info, script)
        return buf.getvalue()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(f"{top}/bin/{program}")
        info.size = len(script)
        info.mode = 0o755
        tf.addfile(info, io.BytesIO(script))
    return buf.getvalue()


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
