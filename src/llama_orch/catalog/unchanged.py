"""Is a registered model still the bytes its digest names? Asked before an engine opens it.

An engine opens the model's path itself, so the file there must still be the one the catalog
hashed. Each file is opened once and looked at through that descriptor: when its identity
(device, inode, size, mtime, ctime) is the one recorded at the last hash, the bytes are the
same and nothing is read; otherwise the file is hashed again through the same descriptor. A
multi-gigabyte model is thus re-read only after it changed, never on every launch.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from llama_orch.catalog.entries import FileIdentity, ModelEntry, ModelFile
from llama_orch.catalog.verify import descriptor_path, sha256_file

#: Read-only, never blocking on a FIFO nor taking a terminal.
_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def identity_of(info: os.stat_result) -> FileIdentity:
    return FileIdentity(
        dev=info.st_dev,
        ino=info.st_ino,
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
        ctime_ns=info.st_ctime_ns,
    )


@dataclass(frozen=True, slots=True)
class Recheck:
    """What a look at a model's files found."""

    #: The files are the bytes registered (their recorded hashes hold).
    ok: bool
    #: Some file was hashed again (its identity had changed, or ``force``).
    rehashed: bool
    #: Why the files are not the registered ones (None when ``ok``).
    problem: str | None = None
    #: The single file's identity now (None for a directory, or a file that cannot be opened).
    identity: FileIdentity | None = None
    #: A directory's files with their identities now (empty for a single file).
    files: list[ModelFile] = field(default_factory=list)


def recheck(
    entry: ModelEntry, *, force: bool = False, stop: threading.Event | None = None
) -> Recheck:
    """Compare the files at ``entry.local_path`` with what the entry recorded; ``force``
    hashes every file whatever its identity (``llorch models verify``)."""
    path = Path(entry.local_path)
    if entry.files:
        return _recheck_tree(path, entry.files, force, stop)
    return _recheck_file(path, entry.digest, entry.identity, force, stop)


def _recheck_file(
    path: Path,
    digest: str | None,
    recorded: FileIdentity | None,
    force: bool,
    stop: threading.Event | None,
) -> Recheck:
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        return Recheck(False, False, f"{path} cannot be opened: {exc.strerror or exc}")
    with io.FileIO(fd, "rb"):
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Recheck(False, False, f"{path} is no longer a regular file")
        now = identity_of(info)
        if not force and now == recorded:
            return Recheck(True, False, identity=now)
        actual = sha256_file(descriptor_path(fd), stop=stop)
        after = identity_of(os.fstat(fd))
    if after != now:
        return Recheck(False, True, f"{path} changed while it was hashed", identity=after)
    if str(actual) != digest:
        problem = f"{path} hashes to {actual}, not the registered {digest}"
        return Recheck(False, True, problem, identity=now)
    return Recheck(True, True, identity=now)


def _recheck_tree(
    path: Path, recorded: list[ModelFile], force: bool, stop: threading.Event | None
) -> Recheck:
    by_name = {each.path: each for each in recorded}
    try:
        present = sorted(p for p in path.rglob("*") if p.is_file())
    except OSError as exc:
        return Recheck(False, False, f"{path} cannot be read: {exc.strerror or exc}")
    names = [p.relative_to(path).as_posix() for p in present]
    if set(names) != set(by_name):
        added = sorted(set(names) - set(by_name))
        gone = sorted(set(by_name) - set(names))
        return Recheck(
            False,
            False,
            f"{path} no longer holds the files registered (added: {added}, gone: {gone})",
        )
    files: list[ModelFile] = []
    rehashed = False
    for name, member in zip(names, present, strict=True):
        known = by_name[name]
        check = _recheck_file(member, f"sha256:{known.sha256}", known.identity, force, stop)
        rehashed = rehashed or check.rehashed
        if not check.ok:
            return Recheck(False, rehashed, check.problem)
        files.append(known.model_copy(update={"identity": check.identity}))
    return Recheck(True, rehashed, files=files)
