"""The fetcher port: one implementation per source scheme, all behind the outbound policy."""

from __future__ import annotations

import errno
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from llama_orch.catalog.refs import ModelRef
from llama_orch.catalog.verify import descriptor_path
from llama_orch.errors import InsufficientSpace
from llama_orch.provisioners.policy import OutboundPolicy
from llama_orch.provisioners.progress import PullProgress

#: Opens a download's partial file: ``(path, mode) -> handle``. Tests inject a failing writer.
OpenPart = Callable[[Path, str], BinaryIO]


def open_part(path: Path, mode: str) -> BinaryIO:
    handle: BinaryIO = path.open(mode)  # type: ignore[assignment]
    return handle


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a fetch left in its staging directory."""

    #: The model's file, or its directory for multi-file sources, inside the staging directory.
    path: Path
    #: sha256 hex the source itself vouches for, per path relative to ``path`` ("" = the file).
    claimed_sha256: dict[str, str] = field(default_factory=dict)
    #: HF revision/commit, ETag, S3 version, OCI manifest digest: whatever the source says.
    source: dict[str, str] = field(default_factory=dict)
    #: sha256 hex of the single file at ``path``, when the fetcher hashed it while writing.
    computed_sha256: str | None = None
    #: A local file, opened once and checked: read through this descriptor only, never by
    #: ``path`` again, so the bytes hashed are those of the file checked. Closed by the reader.
    opened: io.FileIO | None = None
    #: Real folders (catalog.local_roots) every file of a local model directory must lie in
    #: when it is opened to be hashed. None: no bound.
    within: tuple[str, ...] | None = None

    @property
    def readable(self) -> Path:
        """Where the single file's bytes are read: the open descriptor when there is one."""
        return descriptor_path(self.opened.fileno()) if self.opened else self.path


class Fetcher(Protocol):
    def endpoint(self, ref: ModelRef) -> tuple[str, str]:
        """``(scheme, host)`` this fetch will contact, for the outbound and trust policies."""
        ...

    def fetch(
        self, ref: ModelRef, stage: Path, progress: PullProgress, outbound: OutboundPolicy
    ) -> Fetched:
        """Download ``ref`` under ``stage`` (resuming what an earlier try left there); every
        further host the source sends it to (a redirect) passes ``outbound`` first."""
        ...


def translate_disk_full(exc: OSError, where: Path) -> OSError:
    """ENOSPC/EDQUOT become InsufficientSpace; anything else is returned unchanged."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientSpace(
            f"the disk holding {where} is full: {exc.strerror}",
            hint="free space under catalog.root (llorch models rm ...) and pull again; "
            "the download resumes",
        )
    return exc


def validator_path(final: Path) -> Path:
    """Where a download keeps what the source called the revision its ``.part`` bytes are
    from (an ETag, or Last-Modified), so a resume never appends to another revision."""
    return final.with_name(final.name + ".part.validator")


def read_validator(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def keep_validator(path: Path, value: str) -> None:
    """Record ``value`` before the first byte lands, so kept bytes always have one; an empty
    value means the bytes about to be written cannot be resumed."""
    try:
        if value:
            path.write_text(value, encoding="utf-8")
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise translate_disk_full(exc, path) from exc
