"""Digests: parse ``sha256:<hex>``, hash files, and compare (pass | warn | fail)."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from llama_orch.errors import InvalidParams, ServerStopping

#: Read size for hashing: large enough that hashlib, not the syscalls, sets the pace.
CHUNK_BYTES = 4 * 1024 * 1024

_DIGEST = re.compile(r"(sha256):([0-9a-fA-F]{64})")


class VerifyResult(StrEnum):
    PASS = "pass"  # the bytes hash to the expected digest
    WARN = "warn"  # nothing to compare against: the digest is recorded, not checked
    FAIL = "fail"  # the bytes hash to something else


@dataclass(frozen=True, slots=True)
class Digest:
    algo: str
    value: str

    def __str__(self) -> str:
        return f"{self.algo}:{self.value}"


def parse_digest(text: str) -> Digest:
    """``sha256:<64 hex>`` (a bare 64-hex value is read as sha256) -> Digest, lowercase."""
    candidate = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", candidate):
        candidate = f"sha256:{candidate}"
    match = _DIGEST.fullmatch(candidate)
    if match is None:
        raise InvalidParams(
            f"digest {text!r} is not valid", hint="write it as sha256:<64 hex digits>"
        )
    return Digest(match.group(1), match.group(2).lower())


def descriptor_path(fd: int) -> Path:
    """A path to the file open at ``fd`` itself: opening it opens that same file (Linux),
    whatever its name points at by now."""
    return Path(f"/proc/self/fd/{fd}")


def sha256_file(
    path: Path, *, chunk_bytes: int = CHUNK_BYTES, stop: threading.Event | None = None
) -> Digest:
    """The sha256 of a file's bytes, read in large chunks into one reused buffer.

    ``stop``: once set, the hashing ends with ServerStopping at the next chunk (a model of
    many gigabytes would otherwise hold a stopping server for minutes)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    try:
        with path.open("rb", buffering=0) as handle:
            while count := handle.readinto(view):
                if stop is not None and stop.is_set():
                    raise ServerStopping(
                        f"the server is stopping; hashing {path} was cut short",
                        hint="send the request again once the server is back",
                    )
                digest.update(view[:count])
    except OSError as exc:
        # A failed read names no file of its own; the caller's message names this one.
        if exc.filename is None:
            exc.filename = str(path)
        raise
    return Digest("sha256", digest.hexdigest())


def sha256_tree(root: Path, *, stop: threading.Event | None = None) -> Digest:
    """A digest of a directory: sha256 over sorted ``<relative path>\\0<file sha256>\\n`` lines."""
    return tree_digest(
        (path.relative_to(root).as_posix(), sha256_file(path, stop=stop).value)
        for path in sorted(p for p in root.rglob("*") if p.is_file())
    )


def tree_digest(files: Iterable[tuple[str, str]]) -> Digest:
    """The directory digest from its files' ``(relative path, sha256 hex)`` in path order."""
    outer = hashlib.sha256()
    for rel, sha in files:
        outer.update(f"{rel}\0{sha}\n".encode())
    return Digest("sha256", outer.hexdigest())


def digest_of(path: Path, *, stop: threading.Event | None = None) -> Digest:
    return sha256_tree(path, stop=stop) if path.is_dir() else sha256_file(path, stop=stop)


def verify_digest(path: Path, expected: Digest | None) -> tuple[VerifyResult, Digest]:
    """Hash ``path`` and compare: PASS or FAIL against ``expected``, WARN when there is none."""
    actual = digest_of(path)
    if expected is None:
        return VerifyResult.WARN, actual
    return (VerifyResult.PASS if actual == expected else VerifyResult.FAIL), actual
