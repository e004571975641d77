"""Run one provisioning step (git, cmake, pip, a container pull) with its output in a log file.

Output is streamed line by line into the log; cmake's ``[ NN%]`` progress is narrated at every
quarter. A failing step raises ``ProvisionError`` naming the step and showing its last lines.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from pathlib import Path

from llama_orch.observability.narration import narrate
from llama_orch.provisioners.engine._types import ProvisionError

_PROGRESS = re.compile(rb"^\[\s*(\d{1,3})%\]")
TAIL_LINES = 15


async def run_step(
    step: str,
    argv: list[str],
    *,
    log_path: Path,
    target: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run ``argv``; its stdout (stripped) when it exits 0."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    out: list[bytes] = []
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
            )
        except OSError as exc:
            raise ProvisionError(step, f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        assert proc.stdout is not None
        async for line in proc.stdout:
            log.write(line)
            out.append(line)
            tail.append(line.decode(errors="replace").rstrip())
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
    duration_ms = int((time.monotonic() - started) * 1000)
    if code != 0:
        raise ProvisionError(
            step,
            f"`{' '.join(argv[:3])} ...` exited with status {code} after {duration_ms} ms; "
            f"full output in {log_path}",
            detail="\n".join(tail),
        )
    narrate(
        "engine-provisioner",
        step,
        target,
        f"Finishes {step} of {target} in {duration_ms} ms.",
        duration_ms=duration_ms,
    )
    return b"".join(out).decode(errors="replace").strip()
