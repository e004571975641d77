"""``file:`` refs: local bytes, registered where they are; never touches the network."""

from __future__ import annotations

import os
from pathlib import Path

from llama_orch.catalog.refs import FileRef, ModelRef
from llama_orch.errors import InvalidParams, NotFound
from llama_orch.provisioners.fetch.base import Fetched
from llama_orch.provisioners.policy import OutboundPolicy
from llama_orch.provisioners.progress import PullProgress

#: A model directory holds a model's files (weights, config, tokenizer); a tree with more
#: entries than this is a wrong path (a home directory, ``/``), not a model to hash.
MAX_DIRECTORY_ENTRIES = 10_000


class FileFetcher:
    def __init__(self, max_directory_entries: int = MAX_DIRECTORY_ENTRIES) -> None:
        self.max_directory_entries = max_directory_entries

    def endpoint(self, ref: ModelRef) -> tuple[str, str]:
        return "file", ""

    def fetch(
        self, ref: ModelRef, stage: Path, progress: PullProgress, outbound: OutboundPolicy
    ) -> Fetched:
        assert isinstance(ref, FileRef)
        path = Path(ref.path)
        if not path.exists():
            raise NotFound(
                f"{ref.path} does not exist",
                hint="check the path (pools[].model, or the ref given to the catalog)",
            )
        if path.is_dir():
            _check_directory(path, self.max_directory_entries)
        elif not path.is_file():
            raise InvalidParams(f"{ref.path} is neither a regular file nor a directory")
        else:
            _check_readable(path)
        return Fetched(path=path, source={"path": ref.path})


def _check_readable(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise InvalidParams(
            f"{path} cannot be read: {exc.strerror or exc}",
            hint="name a file the server's user can read",
        ) from exc
    if size == 0:
        # Kernel files (/proc, /sys) stat as empty too: none of them is a model.
        raise InvalidParams(
            f"{path} is empty (0 bytes), so there is no model to register",
            hint="name the model's file; one still being written registers once complete",
        )


def _check_directory(path: Path, most: int) -> None:
    """A readable tree of reasonable size, checked before anything is hashed."""
    files = 0
    try:
        for count, entry in enumerate(path.rglob("*"), start=1):
            if count > most:
                raise InvalidParams(
                    f"{path} holds more than {most} entries, which is not a model directory",
                    hint="name the model's file or the directory that holds its files",
                )
            files += entry.is_file()
    except OSError as exc:
        raise InvalidParams(
            f"{path} cannot be read as a model directory: {exc.strerror or exc} "
            f"({exc.filename or path})",
            hint="name the model's file or a directory the server can read",
        ) from exc
    if not files:
        raise InvalidParams(
            f"{path} holds no regular file, so there is no model to register",
            hint="name the model's file or the directory that holds its files",
        )
