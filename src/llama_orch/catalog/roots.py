"""Which folders the local models named to the server may lie in (``catalog.local_roots``).

A ``file:`` ref sent over HTTP makes the server hash whatever it names and report the digest
and size, so without a bound any token holder learns that much about any file the server's user
can read. The check resolves symlinks and ``..`` first and never asks whether the file exists,
so a refusal says nothing about files outside the roots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from llama_orch.catalog.refs import FileRef, ModelRef
from llama_orch.errors import Conflict, InvalidParams

KEY = "catalog.local_roots"


#: Entries of a model directory looked at for links; the file fetcher refuses a bigger tree.
_MOST_ENTRIES = 10_001


def check_local_root(ref: ModelRef, roots: Sequence[str] | None, base_dir: Path) -> ModelRef:
    """Refuse a local ``ref`` that resolves outside every root (``None``: no bound), and a
    model directory holding a link that does: its files' digests are reported too.

    Returns the ref bounded by the roots' real folders, which the file fetcher checks again
    on the file it opens: a link swapped in after this check must not redirect the read."""
    if roots is None or not isinstance(ref, FileRef):
        return ref
    folders = [Path(os.path.realpath(base_dir / Path(root).expanduser())) for root in roots]
    real = Path(os.path.realpath(ref.path))
    if not _inside(real, folders):
        raise _outside(ref.path, roots)
    if real.is_dir():
        with contextlib.suppress(OSError):  # a tree that cannot be read: the fetch says so
            _check_links(ref.path, real, folders)
    return dataclasses.replace(ref, within=tuple(str(folder) for folder in folders))


def check_opened(fd: int, path: str, within: Sequence[str] | None) -> None:
    """The file open at ``fd`` is the one ``path`` names now, and lies under ``within``
    (None: no bound).

    Checked on the descriptor (its device and inode against those of the path's real
    location), so what is then read through ``fd`` is exactly what was checked."""
    if within is None:
        return
    real = Path(os.path.realpath(path))
    if not _inside(real, [Path(folder) for folder in within]):
        raise _outside(path, within)
    opened = os.fstat(fd)
    try:
        now = os.stat(real)
    except OSError:
        now = None
    if now is None or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
        raise Conflict(
            f"{path} was replaced while it was being opened; nothing was registered",
            hint="register it again once it is in place",
        )


def _outside(shown: str, roots: Sequence[str]) -> InvalidParams:
    listed = ", ".join(roots) if roots else "none"
    return InvalidParams(
        f"{shown} is outside {KEY} ({listed}); the server registers local models only "
        "under those folders, after following symlinks and '..'",
        hint=f"put the model under one of them, or add its folder to {KEY} in the config file",
    )


def _check_links(shown: str, real: Path, folders: Sequence[Path]) -> None:
    for count, entry in enumerate(real.rglob("*")):
        if count >= _MOST_ENTRIES:
            return
        if entry.is_symlink() and not _inside(Path(os.path.realpath(entry)), folders):
            raise InvalidParams(
                f"{shown} holds {entry.relative_to(real)}, a link to a place outside {KEY}",
                hint="replace the link by the file it names, or add that folder to "
                f"{KEY} in the config file",
            )


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    return any(path.is_relative_to(folder) for folder in folders)
