"""A small tmpfs to fill or remount read-only under a running catalog or server."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(where: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs at ``where``; skips where this process may not mount (not root)."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def remount(where: Path, mode: str) -> None:
    """``mode``: ``ro`` or ``rw``."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


@contextlib.contextmanager
def filled(disk: Path) -> Iterator[None]:
    """``disk`` with no byte free until the block ends."""
    filler = disk / ".filler"
    with filler.open("wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * (2 << 20))
    try:
        yield
    finally:
        filler.unlink()
