"""Which folders the local models named to the server may lie in (``catalog.local_roots``).

A ``file:`` ref sent over HTTP makes the server hash whatever it names and report the digest
and size, so without a bound any token holder learns that much about any file the server's user
can read. The check resolves symlinks and ``..`` first and never asks whether the file exists,
so a refusal says nothing about files outside the roots.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from llama_orch.catalog.refs import FileRef, ModelRef
from llama_orch.errors import InvalidParams

KEY = "catalog.local_roots"


#: Entries of a model directory looked at for links; the file fetcher refuses a bigger tree.
_MOST_ENTRIES = 10_001


def check_local_root(ref: ModelRef, roots: Sequence[str] | None, base_dir: Path) -> None:
    """Refuse a local ``ref`` that resolves outside every root (``None``: no bound), and a
    model directory holding a link that does: its files' digests are reported too."""
    if roots is None or not isinstance(ref, FileRef):
        return
    folders = [Path(os.path.realpath(base_dir / Path(root).expanduser())) for root in roots]
    real = Path(os.path.realpath(ref.path))
    if not _inside(real, folders):
        listed = ", ".join(roots) if roots else "none"
        raise InvalidParams(
            f"{ref.path} is outside {KEY} ({listed}); the server registers local models only "
            "under those folders, after following symlinks and '..'",
            hint=f"put the model under one of them, or add its folder to {KEY} in the config file",
        )
    if real.is_dir():
        with contextlib.suppress(OSError):  # a tree that cannot be read: the fetch says so
            _check_links(ref.path, real, folders)


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
