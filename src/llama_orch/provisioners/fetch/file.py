"""``file:`` refs: local bytes, registered where they are; never touches the network."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

from llama_orch.catalog.refs import FileRef, ModelRef
from llama_orch.catalog.roots import check_opened
from llama_orch.errors import InvalidParams, NotFound
from llama_orch.provisioners.fetch.base import Fetched
from llama_orch.provisioners.policy import OutboundPolicy
from llama_orch.provisioners.progress import PullProgress

#: A model directory holds a model's files (weights, config, tokenizer); a tree with more
#: entries than this is a wrong path (a home directory, ``/``), not a model to hash.
MAX_DIRECTORY_ENTRIES = 10_000
#: Read-only, never blocking on a FIFO nor taking a terminal.
_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def _nothing(path: Path) -> None:
    return None


class FileFetcher:
    def __init__(
        self,
        max_directory_entries: int = MAX_DIRECTORY_ENTRIES,
        *,
        opened: Callable[[Path], None] = _nothing,
    ) -> None:
        self.max_directory_entries = max_directory_entries
        #: Called once a single file is open and checked (tests change the path there, as a
        #: writer racing the server would).
        self.opened = opened

    def endpoint(self, ref: ModelRef) -> tuple[str, str]:
        return "file", ""

    def fetch(
        self, ref: ModelRef, stage: Path, progress: PullProgress, outbound: OutboundPolicy
    ) -> Fetched:
        assert isinstance(ref, FileRef)
        path = Path(ref.path)
        fd = _open(path)
        try:
            check_opened(fd, ref.path, ref.within)
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                _check_file(fd, path)
                self.opened(path)
                handle = io.FileIO(fd, "rb")
                return Fetched(path=path, source={"path": ref.path}, opened=handle)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        _check_directory(path, self.max_directory_entries)
        # Each of its files is opened and checked the same way when it is hashed.
        return Fetched(path=path, source={"path": ref.path}, within=ref.within)


def open_checked(path: Path, within: tuple[str, ...] | None) -> io.FileIO:
    """A file of a local model directory, opened and checked against ``within`` on its
    descriptor; errors of the system come as the OSError it raised."""
    fd = os.open(path, _FLAGS)
    try:
        check_opened(fd, str(path), within)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidParams(f"{path} is not a regular file (it changed while it was read)")
        return io.FileIO(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open(path: Path) -> int:
    """Open once; every later read of a single file goes through this descriptor."""
    try:
        return os.open(path, _FLAGS)
    except FileNotFoundError as exc:
        raise NotFound(
            f"{path} does not exist",
            hint="check the path (pools[].model, or the ref given to the catalog)",
        ) from exc
    except OSError as exc:
        raise InvalidParams(
            f"{path} cannot be read: {exc.strerror or exc}",
            hint="name a file the server's user can read",
        ) from exc


def _check_file(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise InvalidParams(f"{path} is neither a regular file nor a directory")
    if info.st_size == 0:
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
