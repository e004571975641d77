"""Run one provisioning step (git, cmake, pip, a container pull) with its output in a log file.

Output is streamed into the log in bounded chunks (a tool may print megabytes, or one endless
line); cmake's ``[ NN%]`` progress is narrated at every quarter. A failing step raises
``ProvisionError`` naming the step and showing its last lines. The step runs in its own process
group: when it fails to finish (cancelled because llama-orch stops), the whole tree is killed,
so no compiler job outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections import deque
from pathlib import Path

from llama_orch.observability.narration import narrate
from llama_orch.provisioners.engine._types import ProvisionError

_PROGRESS = re.compile(rb"^\[\s*(\d{1,3})%\]")
TAIL_LINES = 15
#: The longest line kept in an error's tail; the log keeps all of it.
TAIL_LINE_CHARS = 400
#: Bytes read from the tool at a time.
_CHUNK = 1 << 16
#: The most stdout a step returns (it is used for one-line answers such as a commit id).
_MAX_OUTPUT = 1 << 20


class _Lines:
    """The last lines of a byte stream, each cut to ``TAIL_LINE_CHARS``, in bounded memory."""

    def __init__(self) -> None:
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Whole lines completed by ``chunk`` (each cut short)."""
        *done, rest = chunk.split(b"\n")
        lines: list[bytes] = []
        for piece in done:
            lines.append(bytes(self._partial + piece)[: TAIL_LINE_CHARS * 4])
            self._partial.clear()
        room = TAIL_LINE_CHARS * 4 - len(self._partial)
        if room > 0:
            self._partial += rest[:room]
        for line in lines:
            self.tail.append(_shown(line))
        return lines

    def close(self) -> None:
        if self._partial:
            self.tail.append(_shown(bytes(self._partial)))
            self._partial.clear()


def _shown(line: bytes) -> str:
    text = line.decode(errors="replace").rstrip()
    return text if len(text) <= TAIL_LINE_CHARS else text[:TAIL_LINE_CHARS] + " ..."


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _read(
    stream: asyncio.StreamReader,
    idle_timeout_s: float | None,
    step: str,
    argv: list[str],
    log_path: Path,
    lines: _Lines,
) -> bytes:
    try:
        async with asyncio.timeout(idle_timeout_s):
            return await stream.read(_CHUNK)
    except TimeoutError:
        lines.close()
        raise ProvisionError(
            step,
            f"`{' '.join(argv[:3])} ...` printed nothing for {idle_timeout_s:g} s and was "
            f"stopped: it looks hung (a stalled download or build); full output in {log_path}. "
            "If the step is only slow, raise engines.provision_idle_timeout_ms",
            detail="\n".join(lines.tail),
        ) from None


async def run_step(
    step: str,
    argv: list[str],
    *,
    log_path: Path,
    target: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    idle_timeout_s: float | None = None,
) -> str:
    """Run ``argv``; its stdout (stripped) when it exits 0. A step that prints nothing for
    ``idle_timeout_s`` is hung (a stalled download, a build waiting on a lock): it is killed
    and fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    lines = _Lines()
    out = bytearray()
    reported = 0
    with log_path.open("ab") as log:
        log.write(f"--- {step}: {' '.join(argv)}\n".encode())
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProvisionError(step, f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        assert proc.stdout is not None
        try:
            while chunk := await _read(proc.stdout, idle_timeout_s, step, argv, log_path, lines):
                log.write(chunk)
                if len(out) < _MAX_OUTPUT:
                    out += chunk[: _MAX_OUTPUT - len(out)]
                for line in lines.feed(chunk):
                    match = _PROGRESS.match(line)
                    if match and int(match.group(1)) >= reported + 25:
                        reported = int(match.group(1)) // 25 * 25
                        narrate(
                            "engine-provisioner",
                            "build-progress",
                            target,
                            f"Builds {target}: {reported}%.",
                            step=step,
                            percent=reported,
                        )
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                _kill_group(proc)
                with contextlib.suppress(ProcessLookupError):
                    await asyncio.shield(proc.wait())
    lines.close()
    duration_ms = int((time.monotonic() - started) * 1000)
    if code != 0:
        raise ProvisionError(
            step,
            f"`{' '.join(argv[:3])} ...` exited with status {code} after {duration_ms} ms; "
            f"full output in {log_path}",
            detail="\n".join(lines.tail),
        )
    narrate(
        "engine-provisioner",
        step,
        target,
        f"Finishes {step} of {target} in {duration_ms} ms.",
        duration_ms=duration_ms,
    )
    return out.decode(errors="replace").strip()
