"""ArtifactStore: JSON documents addressed by the SHA-256 of their canonical JSON.

Layout under the artifacts directory: ``<id[:2]>/<id>.json`` holds ``{ref, document}`` and
``<id[:2]>/<id>.ref`` the small ref alone, so listing by tag reads only refs. Both are written
atomically (a temporary file in the same directory, then ``os.replace``); the document first, so
a ref never points at a missing document. Ids and tags are checked against strict patterns
before they come near a path.

The in-memory index is the truth; files follow it. ``put_synced`` (the API's) writes in a thread
and syncs the files and their folder before the artifact joins the index.
``put(..., background=True)`` (stream traces, stored as each task ends) does not write files of
its own: the record joins a batch that one I/O thread writes as a shared segment file under
``traces/`` (see ``_segments``), and is served from memory until then, so the event loop never
waits on disk and a trace costs no file created or removed of its own.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from llama_orch.artifacts._segments import Segments
from llama_orch.contracts.api import TAG_PATTERN
from llama_orch.errors import InvalidParams, NotFound, PayloadTooLarge, StorageUnwritable

ARTIFACT_KINDS: Final = ("plan", "summary", "diff", "trace", "other")
#: How many deleted artifacts' places are remembered for paging cursors.
_GONE_KEPT: Final = 10_000
#: A stored record at least this large is read, re-hashed and rendered by ``fetch`` in a worker
#: thread: on the event loop a few MiB stall every stream for tens of milliseconds, while a
#: thread hop costs more than reading a small one inline.
OFF_LOOP_BYTES: Final = 64 * 1024
#: What a read hands back: the artifact itself, or what ``fetch`` rendered of it.
_Read = TypeVar("_Read", dict[str, Any], bytes)
_ID: Final = re.compile(r"^[0-9a-f]{64}$")
_TAG: Final = re.compile(TAG_PATTERN)


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Sorted keys, no whitespace: the bytes the id is the hash of."""
    try:
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        # Integers beyond 64 bits have no canonical form here (nor in most JSON parsers).
        raise InvalidParams(
            f"artifact cannot be stored as canonical JSON: {exc}; send integers past 64 bits "
            "as strings"
        ) from None


def artifact_id(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document)).hexdigest()


def check_artifact_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise InvalidParams(
            f"artifact id must be 64 lowercase hex characters (a SHA-256), got {value[:80]!r}"
        )
    return value


def check_tag(value: str) -> str:
    if len(value) > 128 or not _TAG.fullmatch(value):
        raise InvalidParams(
            f"tag {value[:80]!r} is not allowed: use up to 128 letters and digits, joined "
            "by single . _ : @ + - characters (e.g. task:<id>)"
        )
    return value


def _ref_in(data: bytes, field: str | None = None) -> dict[str, Any] | None:
    """The ref in ``data`` (a ref file, or a record's ``field``), if it has every field the
    index and the API rely on; None for bytes cut short or overwritten."""
    try:
        ref: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if field is not None:
        ref = ref.get(field) if isinstance(ref, dict) else None
    if not isinstance(ref, dict):
        return None
    ident, tags = ref.get("id"), ref.get("tags")
    valid = (
        isinstance(ident, str)
        and _ID.fullmatch(ident) is not None
        and ref.get("digest") == f"sha256:{ident}"
        and ref.get("kind") in ARTIFACT_KINDS
        and type(ref.get("created_ms")) is int
        and isinstance(tags, list)
        and all(isinstance(tag, str) for tag in tags)
    )
    return ref if valid else None


def _decode(ident: str, raw: bytes) -> dict[str, Any] | str:
    """A stored record ``{ref, document}``, or why it is damaged: the document must still hash
    to the id it is stored under."""
    try:
        stored: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(stored, dict) or _ref_in(orjson.dumps(stored.get("ref"))) is None:
        return "no valid ref"
    document = stored.get("document")
    if not isinstance(document, dict):
        return "no document"
    try:
        actual = artifact_id(document)
    except InvalidParams:
        return "the document has no canonical form"
    if actual != ident:
        return f"the document hashes to {actual}"
    return stored


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored artifact's ref (SPEC ArtifactRef) and whether this call created it."""

    ref: dict[str, Any]
    created: bool

    @property
    def id(self) -> str:
        return str(self.ref["id"])


def _atomic_write(path: Path, data: bytes, sync: Callable[[int], None]) -> None:
    # One writer per target at a time (``put_synced`` writes an id once), so a name per process
    # and target is unique without mkstemp's random names and retries.
    tmp = path.parent / f".tmp-{os.getpid()}-{path.name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            sync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class ArtifactStore:
    """Put, get and list artifacts; the index of refs is read from disk on first use."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        clock_ms: Any = None,
        sync: Callable[[int], None] = os.fsync,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        #: Makes an open file or folder durable (``os.fsync``, or what a test watches).
        self._sync = sync
        #: ``put_synced`` writes in flight, by id: a second identical put waits for the first.
        self._writing: dict[str, asyncio.Future[None]] = {}
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._refs: dict[str, dict[str, Any]] | None = None
        #: (created_ms, id) in creation order, for stable paging.
        self._order: list[tuple[int, str]] = []
        #: The same keys per tag, so a page by tag starts where it should without a scan.
        self._tagged: dict[str, list[tuple[int, str]]] = {}
        #: Where recently deleted artifacts stood in creation order, so a paging cursor
        #: that retention pruned meanwhile still says where the next page starts.
        self._gone: OrderedDict[str, tuple[int, str]] = OrderedDict()
        #: Background puts (stream traces), batched into segment files.
        self._segments = Segments(root / "traces", sync=sync)

    def close(self) -> None:
        """Wait until every background write is on disk and synced, and every delete done."""
        self._segments.close()

    def _write_files(self, ident: str, doc_bytes: bytes, ref_bytes: bytes) -> None:
        """Both files, each synced before its rename, then their folder (the new names are
        durable once the folder is)."""
        doc_path, ref_path = self._paths(ident)
        doc_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(doc_path, doc_bytes, self._sync)
        _atomic_write(ref_path, ref_bytes, self._sync)
        fd = os.open(doc_path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._sync(fd)
        finally:
            os.close(fd)

    def _unlink(self, ident: str) -> None:
        for path in self._paths(ident):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # --- paths and index ------------------------------------------------------------------

    def _paths(self, ident: str) -> tuple[Path, Path]:
        folder = self.root / ident[:2]
        return folder / f"{ident}.json", folder / f"{ident}.ref"

    def _index(self) -> dict[str, dict[str, Any]]:
        if self._refs is None:
            refs: dict[str, dict[str, Any]] = {}
            if self.root.is_dir():
                for path in self.root.glob("??/*.ref"):
                    with contextlib.suppress(OSError):
                        ref = _ref_in(path.read_bytes())
                        # A ref file names its artifact: one that says otherwise is damaged.
                        if ref is not None and ref["id"] == path.stem:
                            refs[path.stem] = ref
                for record in self._segments.load():
                    ref = _ref_in(record, field="ref")
                    if ref is not None:
                        refs[ref["id"]] = ref
            self._refs = refs
            self._order = sorted((int(r["created_ms"]), i) for i, r in refs.items())
            self._tagged = {}
            for key in self._order:
                for tag in set(refs[key[1]]["tags"]):
                    self._tagged.setdefault(tag, []).append(key)
        return self._refs

    def __len__(self) -> int:
        return len(self._index())

    # --- operations -----------------------------------------------------------------------

    def put(self, document: Mapping[str, Any], *, background: bool = False) -> Stored:
        """Store ``document`` (kind, content, tags?, parent?, metadata?); same bytes, same id.

        With ``background`` the record is written by the I/O thread (see the module docstring);
        without, the files are written and synced before it returns, which blocks: the server
        stores through ``put_synced``, which does that in a thread.
        """
        ident, data = self._canonical(document)
        refs = self._index()
        if ident in refs:
            return Stored(refs[ident], created=False)
        ref, doc_bytes, ref_bytes = self._files(ident, data, document)
        if background:
            self._segments.add(ident, doc_bytes)
        else:
            self._write_files(ident, doc_bytes, ref_bytes)
        return self._commit(ref)

    async def put_synced(self, document: Mapping[str, Any]) -> Stored:
        """``put``, with the files on disk and synced (file and folder) before it returns; the
        writing happens in a thread, so the event loop never waits on the disk."""
        ident, data = self._canonical(document)
        refs = self._index()
        writing = self._writing.get(ident)
        if writing is not None:
            await asyncio.shield(writing)
        if ident in refs:
            return Stored(refs[ident], created=False)
        ref, doc_bytes, ref_bytes = self._files(ident, data, document)
        done = self._writing[ident] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.to_thread(self._write_files, ident, doc_bytes, ref_bytes)
            return self._commit(ref)
        except OSError as exc:
            raise StorageUnwritable(
                f"cannot store the artifact under {self.root}: {exc.strerror or exc}",
                hint="free space on that disk or make server.artifacts_dir writable, then "
                "send the artifact again",
            ) from exc
        finally:
            del self._writing[ident]
            done.set_result(None)

    def _canonical(self, document: Mapping[str, Any]) -> tuple[str, bytes]:
        """``document``'s id and canonical JSON, checked."""
        for tag in document.get("tags") or []:
            check_tag(tag)
        data = canonical_json(document)
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(
                f"artifact is {len(data)} bytes as canonical JSON; the limit is {self.max_bytes} "
                "(server.artifact_max_bytes)"
            )
        return hashlib.sha256(data).hexdigest(), data

    def _files(
        self, ident: str, data: bytes, document: Mapping[str, Any]
    ) -> tuple[dict[str, Any], bytes, bytes]:
        """A new artifact's ref, and the bytes of its document and ref files."""
        ref = {
            "id": ident,
            "kind": document["kind"],
            "digest": f"sha256:{ident}",
            "created_ms": self._clock_ms(),
            "tags": list(document.get("tags") or []),
        }
        ref_bytes = orjson.dumps(ref)
        doc_bytes = b'{"ref":' + ref_bytes + b',"document":' + data + b"}"
        return ref, doc_bytes, ref_bytes

    def _commit(self, ref: dict[str, Any]) -> Stored:
        ident = ref["id"]
        self._index()[ident] = ref
        key = (int(ref["created_ms"]), ident)
        bisect.insort(self._order, key)
        for tag in set(ref["tags"]):
            bisect.insort(self._tagged.setdefault(tag, []), key)
        return Stored(ref, created=True)

    def _unorder(self, ref: dict[str, Any]) -> tuple[int, str]:
        """Take a ref out of the creation order (and its tags' orders); its key."""
        key = (int(ref["created_ms"]), str(ref["id"]))
        with contextlib.suppress(ValueError):
            self._order.remove(key)
        for tag in set(ref["tags"]):
            keys = self._tagged.get(tag)
            if keys is not None:
                with contextlib.suppress(ValueError):
                    keys.remove(key)
                if not keys:
                    del self._tagged[tag]
        return key

    def get(self, ident: str) -> dict[str, Any]:
        """The stored artifact: its ref fields, then kind, content, tags, parent, metadata."""
        self._known(ident)
        return self._found(ident, self._load(ident))

    async def fetch(self, ident: str, render: Callable[[dict[str, Any]], bytes]) -> bytes:
        """``render`` of ``get(ident)``; a record of ``OFF_LOOP_BYTES`` or more is read,
        checked against its id and rendered in a worker thread, so the loop keeps serving."""
        self._known(ident)

        def read_and_render() -> bytes | str | None:
            loaded = self._load(ident)
            return render(loaded) if isinstance(loaded, dict) else loaded

        if self._size(ident) < OFF_LOOP_BYTES:
            return self._found(ident, read_and_render())
        # The index is changed only here, on the loop (a damaged record is set aside).
        return self._found(ident, await asyncio.to_thread(read_and_render))

    def _known(self, ident: str) -> None:
        check_artifact_id(ident)
        if ident not in self._index():
            raise self._missing(ident)

    @staticmethod
    def _missing(ident: str) -> NotFound:
        return NotFound(f"artifact {ident} is unknown (or was pruned)")

    def _size(self, ident: str) -> int:
        """The stored record's size in bytes, without reading it (0: gone)."""
        size = self._segments.size(ident)
        if size is not None:
            return size
        try:
            return self._paths(ident)[0].stat().st_size
        except OSError:
            return 0

    def _load(self, ident: str) -> dict[str, Any] | str | None:
        """The stored artifact, why its record is damaged, or None when the record is gone.
        Only reads: safe in a worker thread."""
        try:
            if self._segments.holds(ident):
                raw = self._segments.read(ident)
                if raw is None:
                    return None
            else:
                raw = self._paths(ident)[0].read_bytes()
        except FileNotFoundError:
            return None
        stored = _decode(ident, raw)
        if isinstance(stored, str):
            return stored
        return {**stored["ref"], **stored["document"]}

    def _found(self, ident: str, loaded: _Read | str | None) -> _Read:
        """``loaded``, or the not-found error for a gone or damaged record (set aside)."""
        if loaded is None:
            raise self._missing(ident)
        if isinstance(loaded, str):
            self._set_aside(ident)
            raise NotFound(
                f"artifact {ident} was damaged on disk ({loaded}) and is set aside; POST it "
                "again to store it anew"
            )
        return loaded

    def _set_aside(self, ident: str) -> None:
        """Drop a damaged artifact from the index; its files stay, renamed, for a look."""
        refs = self._index()
        ref = refs.pop(ident, None)
        if ref is not None:
            self._unorder(ref)
        if self._segments.holds(ident):
            self._segments.remove(ident)
            return
        for path in self._paths(ident):
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(f"{path.name}.damaged"))

    def delete(self, ident: str) -> None:
        refs = self._index()
        ref = refs.pop(ident, None)
        if ref is None:
            return
        self._gone[ident] = self._unorder(ref)
        if len(self._gone) > _GONE_KEPT:
            self._gone.popitem(last=False)
        if self._segments.holds(ident):
            self._segments.remove(ident)
        else:
            self._unlink(ident)

    def batched(self, ident: str) -> bool:
        """Whether ``ident`` was stored with ``background`` (a stream trace the server wrote),
        not through the API."""
        self._index()  # the segments on disk are indexed with the refs
        return self._segments.holds(ident)

    def refs(self, tag: str | None = None) -> Iterator[dict[str, Any]]:
        """Refs in creation order, optionally only those carrying ``tag``."""
        refs = self._index()
        for _, ident in list(self._order):
            ref = refs.get(ident)
            if ref is not None and (tag is None or tag in ref["tags"]):
                yield ref

    def page(
        self, tag: str | None, *, limit: int, after: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` refs with ``tag`` created after the artifact ``after``, and the id to
        pass as ``after`` for the next page (None on the last page)."""
        if tag is not None:
            check_tag(tag)
        start: tuple[int, str] | None = None
        if after is not None:
            check_artifact_id(after)
            cursor = self._index().get(after)
            start = (int(cursor["created_ms"]), after) if cursor else self._gone.get(after)
            if start is None:
                raise NotFound(
                    f"artifact {after} (the paging cursor) is unknown, or was pruned before "
                    "this server started; page again from the start"
                )
        refs = self._index()
        order = self._order if tag is None else self._tagged.get(tag, [])
        # A bisection, not a scan: a page costs its own length however many artifacts there are.
        first = 0 if start is None else bisect.bisect_right(order, start)
        items = [refs[ident] for _, ident in order[first : first + limit]]
        more = len(order) > first + limit
        return items, (items[-1]["id"] if more and items else None)
