"""Segments: artifacts written in the background (stream traces), batched into shared files.

A trace is stored for every task, so one file created (and later removed) per trace would cost
more than the rest of a task's bookkeeping. Instead the I/O thread gathers what arrived during
``delay_s`` and writes it as one segment, ``traces/<n>.seg``: one record per line (the stored
``{ref, document}`` JSON, which never contains a raw newline), written to a temporary name and
renamed, so a segment is on disk whole or not at all. A segment file is removed once every
record in it has been deleted. Until its segment is on disk a record is served from memory.

Durability costs one ``fsync`` of the file before its rename and one of the folder after it, per
segment, on the I/O thread: a batch, never a record, and never the event loop. So a record is
durable within about ``delay_s`` of its ``add``, and ``close`` returns once everything handed
over is. Deletes are not synced: a power loss can bring a deleted record back, as a restart
already may (below).

Deletes are in memory at once; a segment whose records are only partly deleted keeps them on
disk until the rest go, so after a restart those oldest records are listed again until the
owner (``TraceWriter``'s retention) deletes them once more.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

#: A record's place: (segment file name, byte offset, length).
Place = tuple[str, int, int]
_SUFFIX: Final = ".seg"


class Segments:
    """Records by id, appended in batches by one I/O thread; reads and deletes from any thread."""

    def __init__(
        self, folder: Path, *, delay_s: float = 0.2, sync: Callable[[int], None] = os.fsync
    ) -> None:
        self.folder = folder
        self.delay_s = delay_s
        #: Makes an open file or folder durable; ``os.fsync`` but where a test watches it.
        self._sync = sync
        self._cond = threading.Condition()
        #: Records handed over and not yet on disk, by id (what reads are served from).
        self._pending: dict[str, bytes] = {}
        #: The same records in arrival order, not yet taken by the I/O thread.
        self._queue: list[tuple[str, bytes]] = []
        self._where: dict[str, Place] = {}
        #: Records not deleted, per segment file.
        self._live: dict[str, int] = {}
        self._doomed: list[str] = []
        self._next = 0
        self._thread: threading.Thread | None = None
        self._closing = False

    # --- loading --------------------------------------------------------------------------

    def load(self) -> Iterator[bytes]:
        """Index the segments on disk; yield every record, oldest first."""
        if not self.folder.is_dir():
            return
        names = sorted(
            (p.name for p in self.folder.glob(f"*{_SUFFIX}") if p.stem.isdigit()),
            key=lambda name: int(name.removesuffix(_SUFFIX)),
        )
        for name in names:
            self._next = max(self._next, int(name.removesuffix(_SUFFIX)) + 1)
            try:
                data = (self.folder / name).read_bytes()
            except OSError:
                continue
            offset = 0
            for line in data.split(b"\n"):
                if line:
                    yield line
                    ident = self._ident_of(line)
                    if ident is not None:
                        self._where[ident] = (name, offset, len(line))
                        self._live[name] = self._live.get(name, 0) + 1
                offset += len(line) + 1

    @staticmethod
    def _ident_of(record: bytes) -> str | None:
        # A record starts with its ref: {"ref":{"id":"<64 hex>",...
        head = b'{"ref":{"id":"'
        if not record.startswith(head):
            return None
        return record[len(head) : len(head) + 64].decode("ascii", "replace")

    # --- operations -----------------------------------------------------------------------

    def holds(self, ident: str) -> bool:
        return ident in self._pending or ident in self._where

    def add(self, ident: str, record: bytes) -> None:
        with self._cond:
            self._pending[ident] = record
            self._queue.append((ident, record))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="artifacts-segments", daemon=True
                )
                self._thread.start()
            elif len(self._queue) == 1:
                self._cond.notify()

    def size(self, ident: str) -> int | None:
        """The record's length in bytes, without reading it; None when not held."""
        with self._cond:
            record = self._pending.get(ident)
            place = self._where.get(ident) if record is None else None
        if record is not None:
            return len(record)
        return None if place is None else place[2]

    def read(self, ident: str) -> bytes | None:
        with self._cond:
            record = self._pending.get(ident)
            place = self._where.get(ident) if record is None else None
        if record is not None or place is None:
            return record
        name, offset, length = place
        try:
            with (self.folder / name).open("rb") as handle:
                handle.seek(offset)
                return handle.read(length)
        except FileNotFoundError:
            return None

    def remove(self, ident: str) -> None:
        with self._cond:
            if self._pending.pop(ident, None) is not None:
                return
            place = self._where.pop(ident, None)
            if place is None:
                return
            name = place[0]
            self._live[name] -= 1
            if self._live[name] == 0:
                del self._live[name]
                if self._thread is None:
                    self._unlink([name])
                    return
                self._doomed.append(name)
                self._cond.notify()

    def close(self) -> None:
        """Write everything handed over, remove what is doomed, stop the I/O thread."""
        with self._cond:
            thread, self._closing = self._thread, True
            self._cond.notify()
        if thread is not None:
            thread.join()
        with self._cond:
            self._thread, self._closing = None, False

    # --- the I/O thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._queue or self._doomed or self._closing):
                    self._cond.wait()
                if self._queue and not self._closing:
                    # Let the batch fill: one file for everything that ends meanwhile.
                    self._cond.wait(self.delay_s)
                batch, self._queue = self._queue, []
                doomed, self._doomed = self._doomed, []
                closing = self._closing
            if batch:
                try:
                    self._write(batch)
                except OSError:
                    # Not stored (disk full, directory gone): the records are dropped, as a
                    # failed write of a single file would drop it; serving continues.
                    with self._cond:
                        for ident, _ in batch:
                            self._pending.pop(ident, None)
            self._unlink(doomed)
            if closing and not batch and not doomed:
                return

    def _write(self, batch: list[tuple[str, bytes]]) -> None:
        with self._cond:  # records deleted while they waited are not written at all
            batch = [(ident, record) for ident, record in batch if ident in self._pending]
        if not batch:
            return
        name = f"{self._next:012d}{_SUFFIX}"
        self._next += 1
        places: list[tuple[str, int, int]] = []
        offset = 0
        for ident, record in batch:
            places.append((ident, offset, len(record)))
            offset += len(record) + 1
        try:
            self.folder.mkdir(parents=True)
        except FileExistsError:
            pass
        else:
            self._sync_folder(self.folder.parent)
        path = self.folder / name
        tmp = self.folder / f".tmp-{os.getpid()}-{name}"
        with tmp.open("wb") as handle:
            handle.write(b"\n".join(record for _, record in batch) + b"\n")
            handle.flush()
            self._sync(handle.fileno())
        os.replace(tmp, path)
        self._sync_folder(self.folder)
        with self._cond:
            live = 0
            for ident, start, length in places:
                # A record deleted while it waited is written but not counted as live.
                if self._pending.pop(ident, None) is not None:
                    self._where[ident] = (name, start, length)
                    live += 1
            if live:
                self._live[name] = live
        if not live:
            self._unlink([name])

    def _sync_folder(self, folder: Path) -> None:
        # A new name in a folder is durable once the folder is synced, not the file alone.
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._sync(fd)
        finally:
            os.close(fd)

    def _unlink(self, names: list[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / name).unlink()
