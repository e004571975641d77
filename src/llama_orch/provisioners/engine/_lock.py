"""One preparation of an engine artifact at a time, across pools and processes.

Two pools with the same engine (or two llama-orch processes sharing an engine cache) would
otherwise clone, build or unpack into the same directory at once. ``exclusive`` holds an
``flock`` on a lock file beside the artifact: the first caller does the work, the others wait
and then find it done. The kernel drops the lock when its holder dies, however it dies, so a
crashed build never blocks the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

from llama_orch.observability.narration import narrate

#: How often a waiting caller tries the lock again.
POLL_S = 0.05


@contextlib.asynccontextmanager
async def exclusive(lock_path: Path, what: str) -> AsyncIterator[None]:
    """Hold ``lock_path`` (created) for the body; waits without blocking the event loop."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    waited = True
                    narrate(
                        "engine-provisioner",
                        "wait",
                        what,
                        f"Waits for the preparation of {what} already under way.",
                    )
                await asyncio.sleep(POLL_S)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
