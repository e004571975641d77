"""Resumable downloads: append to ``<name>.part`` from where an earlier try stopped, then rename.

A source is a function ``open(offset) -> Body``: it starts the transfer at ``offset`` (a Range
request) and says whether it honoured the offset. Transient failures are retried, each retry
resuming from the bytes already on disk. A try that moves slower than its RateFloor is one of
them: a source that trickles a byte now and then never trips a read timeout, and would hold the
pull (and its single-flight lock) forever.

The sha256 of the file is computed while it downloads, in a second thread (hashlib releases the
GIL), so verification costs no second pass over the bytes and overlaps the network reads.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llama_orch.errors import FetchFailed, InsufficientSpace
from llama_orch.provisioners.fetch.base import OpenPart, open_part, translate_disk_full
from llama_orch.provisioners.progress import PullProgress

#: A body of unknown length has its room on disk checked each time this much more arrived.
UNSIZED_STEP_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Body:
    total: int | None
    #: True when the body starts at the requested offset; False means "from byte 0".
    resumed: bool
    chunks: Iterator[bytes]
    close: Callable[[], None]


class Transient(Exception):
    """A failure worth another try (5xx, reset connection, truncated body, too slow)."""


@dataclass(frozen=True, slots=True)
class RateFloor:
    """The slowest a download may go: fewer than ``min_bytes`` arriving within ``window_s``
    fails the try. The default, 1 MiB a minute (about 17 KiB/s), is a pace at which a model of
    a few GiB would take days, so no working link is ever cut off, while a source that sends a
    byte every few seconds is given up on (and retried) within about a minute."""

    min_bytes: int = 1024 * 1024
    window_s: float = 60.0

    def watch(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks`` as they come; raises Transient once a window ends below the floor. Each
        chunk counts when it arrives, so chunks must be what each network read returned."""
        start = time.monotonic()
        got = 0
        for chunk in chunks:
            yield chunk
            got += len(chunk)
            elapsed = time.monotonic() - start
            if elapsed >= self.window_s:
                if got < self.min_bytes:
                    raise Transient(
                        f"the source sent {got} bytes in {elapsed:.1f} s "
                        f"({got / elapsed:.0f} B/s), below the floor of {self.min_bytes} bytes "
                        f"every {self.window_s:g} s"
                    )
                start, got = time.monotonic(), 0


DEFAULT_FLOOR = RateFloor()


class StreamHasher:
    """sha256 of the bytes fed to it, hashed in its own thread (bounded queue)."""

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        self.fed = 0
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def restart(self) -> None:
        """Forget what was fed (the next bytes start another copy of the file)."""
        self.hexdigest()
        self._start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)

    def feed(self, chunk: bytes) -> None:
        self._queue.put(chunk)
        self.fed += len(chunk)

    def feed_file(self, path: Path, size: int) -> None:
        """Hash the first ``size`` bytes already on disk (a download resumed by another try)."""
        with path.open("rb") as handle:
            while size > self.fed:
                chunk = handle.read(min(4 * 1024 * 1024, size - self.fed))
                if not chunk:
                    break
                self.feed(chunk)

    def hexdigest(self) -> str:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        return self._hash.hexdigest()


def download(
    final: Path,
    open_body: Callable[[int], Body],
    progress: PullProgress,
    *,
    attempts: int = 4,
    backoff_s: float = 0.2,
    opener: OpenPart = open_part,
    floor: RateFloor = DEFAULT_FLOOR,
) -> str:
    """Fetch into ``final.part`` (resuming), check the length, rename to ``final``.

    Returns the sha256 hex of the file's bytes."""
    part = final.with_name(final.name + ".part")
    hasher = StreamHasher()
    try:
        return _download(
            final, part, open_body, progress, attempts, backoff_s, opener, floor, hasher
        )
    finally:
        hasher.hexdigest()  # stops its thread on every way out


def _download(
    final: Path,
    part: Path,
    open_body: Callable[[int], Body],
    progress: PullProgress,
    attempts: int,
    backoff_s: float,
    opener: OpenPart,
    floor: RateFloor,
    hasher: StreamHasher,
) -> str:
    last: Exception | None = None
    for attempt in range(attempts):
        offset = part.stat().st_size if part.exists() else 0
        try:
            body = open_body(offset)
        except Transient as exc:
            last = exc
            time.sleep(backoff_s * (2**attempt))
            continue
        try:
            if not body.resumed:
                offset = 0
            if offset != hasher.fed:
                hasher.restart()
                hasher.feed_file(part, offset)
            if body.total is not None:
                progress.set_total(body.total, offset)
            _write(part, offset, floor.watch(body.chunks), body.total, hasher, progress, opener)
        except Transient as exc:
            last = exc
            time.sleep(backoff_s * (2**attempt))
            continue
        finally:
            body.close()
        size = part.stat().st_size
        if body.total is not None and size != body.total:
            last = Transient(f"got {size} of {body.total} bytes")
            continue
        os.replace(part, final)
        return hasher.hexdigest()
    raise FetchFailed(
        f"could not download {final.name} after {attempts} tries: {last}",
        hint="pull again later; the bytes already fetched are kept and the download resumes",
    )


def _write(
    part: Path,
    offset: int,
    chunks: Iterator[bytes],
    total: int | None,
    hasher: StreamHasher,
    progress: PullProgress,
    opener: OpenPart,
) -> None:
    """Append ``chunks`` to ``part`` (from ``offset``), hashing and counting them, then fsync."""
    # A body of unknown length is checked against the free space as it grows, so a source
    # that never ends stops at the reserve, not at a full disk.
    room = 0 if total is None else None
    try:
        with opener(part, "ab" if offset else "wb") as handle:
            for chunk in chunks:
                if room is not None and room < len(chunk):
                    progress.expect_more(UNSIZED_STEP_BYTES)
                    room += UNSIZED_STEP_BYTES
                handle.write(chunk)
                hasher.feed(chunk)
                progress.add(len(chunk))
                if room is not None:
                    room -= len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except InsufficientSpace:
        raise
    except OSError as exc:
        raise translate_disk_full(exc, part) from exc
