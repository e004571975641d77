"""The filesystem catalog: the model index under one root, written atomically under a lock.

Layout (``catalog.root``)::

    models.json        {"version": 1, "models": [ModelEntry, ...]}
    models.json.bak    a copy of the index, written after it (restores a damaged one at start)
    engines.json       the engine index, the engine provisioner's own (provisioners/engine)
    .lock              writers hold an exclusive flock for a read-modify-write
    models/<slug>/     the bytes of each model the catalog owns
    .staging/<slug>/   downloads in progress (never visible as a model)
    .trash/            artifacts being deleted
    .locks/<slug>.lock a model's single-flight pull lock (provisioners/models)
    .locks/<slug>.use  shared by each process serving the model; a delete needs it exclusive

Writers replace an index by writing a temporary file, fsync, rename over the index and fsync
the directory, so a reader (which takes no lock) sees the old index or the new one, never a torn
one. Readers cache the parsed index and re-read it only when the file's inode, size or mtime
changed, so ``locate`` costs a ``stat``. The catalog never touches the network.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from llama_orch.catalog.entries import Lifecycle, ModelEntry, ResolvedModel
from llama_orch.catalog.refs import ModelRef, parse_ref, ref_id, safe_relative
from llama_orch.errors import (
    CatalogError,
    Conflict,
    IndexCorrupt,
    IndexVersionError,
    InvalidModelRef,
    NotFound,
    OrchError,
    StorageUnwritable,
)

MODELS_VERSION = 1

E = TypeVar("E", bound=BaseModel)


def default_catalog_root(environ: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/llama-orch/catalog``, else ``~/.cache/llama-orch/catalog``."""
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME", "~")) / ".cache")
    return Path(base).expanduser() / "llama-orch" / "catalog"


def default_model_cache_dir(environ: Mapping[str, str]) -> Path:
    return default_catalog_root(environ) / "models"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def slug_of(model_id: str) -> str:
    """A directory name for an id: readable prefix plus a hash, so distinct ids never collide."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._")[:80]
    return f"{readable}-{hashlib.sha256(model_id.encode()).hexdigest()[:12]}"


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename over ``path``, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def writing(root: Path) -> Iterator[None]:
    """A write under the catalog ``root`` that the disk refuses (read-only, full) becomes a
    typed error naming the root and the disk's reason."""
    try:
        yield
    except OrchError:
        raise
    except OSError as exc:
        raise StorageUnwritable(
            f"cannot write the model catalog under {root}: {exc.strerror or exc}",
            hint="free space on that disk or make catalog.root writable, then send the "
            "request again",
        ) from exc


def fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def inside(root: Path, path: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies within ``root``."""
    return path.resolve().is_relative_to(root.resolve())


def safe_join(base: Path, relative: str) -> Path:
    """``base / relative`` for a name that came from outside; traversal raises InvalidModelRef."""
    target = base / safe_relative(relative, relative)
    if not inside(base, target):
        raise InvalidModelRef(f"path {relative!r} escapes {base}")
    return target


def check_tree(base: Path) -> None:
    """Refuse a staged tree holding a symlink that points outside it."""
    for path in [base, *base.rglob("*")]:
        if path.is_symlink() and not inside(base, path):
            raise InvalidModelRef(f"{path.relative_to(base)} links outside the download")


@dataclass(slots=True)
class _Cached(Generic[E]):
    key: tuple[int, int, int]
    entries: dict[str, E]


class _Index(Generic[E]):
    """One JSON index file: ``{"version": N, <field>: [entry, ...]}``."""

    def __init__(self, path: Path, field: str, version: int, kind: type[E]) -> None:
        self.path = path
        self.field = field
        self.version = version
        self.kind = kind
        self._cache: _Cached[E] | None = None

    def read(self) -> dict[str, E]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = self._cache
        if cached is not None and cached.key == key:
            return cached.entries
        entries = self._parse(self.path.read_bytes())
        self._cache = _Cached(key, entries)
        return entries

    def _parse(self, data: bytes) -> dict[str, E]:
        try:
            raw: Any = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise self._corrupt(f"it is not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise self._corrupt("it is not a JSON object")
        found = raw.get("version")
        if found != self.version:
            raise IndexVersionError(
                f"{self.path} has schema version {found!r}; this build reads version "
                f"{self.version}",
                hint="upgrade llama-orch, or move the catalog root aside and pull again",
            )
        items = raw.get(self.field)
        if not isinstance(items, list):
            raise self._corrupt(f"it has no {self.field!r} list")
        entries: dict[str, E] = {}
        for position, item in enumerate(items):
            try:
                entry = self.kind.model_validate(item)
            except ValidationError as exc:
                problem = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in problem["loc"]) or "entry"
                raise self._corrupt(f"{self.field}[{position}].{where}: {problem['msg']}") from None
            entries[item["id"]] = entry
        return entries

    def _corrupt(self, why: str) -> IndexCorrupt:
        return IndexCorrupt(
            f"catalog index {self.path} cannot be read: {why}",
            hint="restart the server: it keeps the damaged file beside the index and starts an "
            "empty one (files under models/ stay; pull or register them again), or restore "
            "the file from a backup",
        )

    @property
    def backup(self) -> Path:
        """The copy of the index written after it, for when the index itself is damaged."""
        return self.path.with_name(f"{self.path.name}.bak")

    def set_aside_if_corrupt(self) -> Recovery | None:
        """Rename a damaged index to ``<name>.corrupt-<ms>`` (the caller holds the lock) and
        put its backup copy in its place when that one reads; an index of another schema
        version is left alone, a newer build may still read it."""
        try:
            self.read()
        except IndexCorrupt as exc:
            kept = self.path.with_name(f"{self.path.name}.corrupt-{now_ms()}")
            os.replace(self.path, kept)
            fsync_dir(self.path.parent)
            self._cache = None
            return Recovery(kept, exc.message, self._restore_backup())
        return None

    def _restore_backup(self) -> Path | None:
        try:
            data = self.backup.read_bytes()
            self._parse(data)
        except (OSError, CatalogError):
            return None
        write_atomic(self.path, data)
        return self.backup

    def write(self, entries: dict[str, E]) -> None:
        items = [entries[key].model_dump(mode="json") for key in sorted(entries)]
        data = orjson.dumps(
            {"version": self.version, self.field: items}, option=orjson.OPT_INDENT_2
        )
        write_atomic(self.path, data)
        # Written after the index, so it is never newer than an index that reads. The change
        # is made once the index is written: a copy the disk refuses is dropped rather than
        # left stale (restored, it would undo changes made since).
        try:
            write_atomic(self.backup, data)
        except OSError:
            with contextlib.suppress(OSError):
                self.backup.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Recovery:
    """A damaged index set aside at start."""

    kept: Path
    why: str
    #: The backup copy put in its place (None: none could be read; the index starts empty).
    restored_from: Path | None


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    found: bool
    #: Why the artifacts could not all be removed; the entry is gone all the same.
    problem: str | None = None


class CatalogStore:
    """The default catalog store (D-CAT-01): filesystem under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()
        self.models_dir = self.root / "models"
        self.staging_dir = self.root / ".staging"
        self.trash_dir = self.root / ".trash"
        self.locks_dir = self.root / ".locks"
        self._models = _Index(self.root / "models.json", "models", MODELS_VERSION, ModelEntry)

    def ensure_layout(self) -> None:
        for directory in (self.models_dir, self.staging_dir, self.trash_dir, self.locks_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def recover(self) -> builtins.list[Recovery]:
        """Set aside a model index that cannot be read, so the catalog starts with an empty
        one instead of failing each request; returns where the damaged copy went, and why.

        engines.json is left alone: the engine provisioner keeps its own index in that file.
        """
        with self._locked():
            kept = self._models.set_aside_if_corrupt()
        return [kept] if kept is not None else []

    def empty_trash(self) -> int:
        """Remove what deletes interrupted (killed between moving a model's files aside and
        removing them) left in ``.trash``; returns how many were removed."""
        with self._locked():
            leftovers = list(self.trash_dir.iterdir()) if self.trash_dir.is_dir() else []
            for leftover in leftovers:
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        return len(leftovers)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The writers' lock; every read-modify-write of an index runs inside it."""
        with writing(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            with (self.root / ".lock").open("a+b") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # -- models -------------------------------------------------------------------------------

    def get(self, model_id: str) -> ModelEntry | None:
        return self._models.read().get(model_id)

    def list(self) -> list[ModelEntry]:
        entries = self._models.read()
        return [entries[key] for key in sorted(entries)]

    def put(self, entry: ModelEntry) -> ModelEntry:
        """Insert or replace an entry (registration is this one atomic index write)."""
        with self._locked():
            entries = dict(self._models.read())
            previous = entries.get(entry.id)
            stamp = now_ms()
            created = previous.created_ms if previous else entry.created_ms or stamp
            stored = entry.model_copy(update={"created_ms": created, "updated_ms": stamp})
            entries[entry.id] = stored
            self._models.write(entries)
            return stored

    def update(self, model_id: str, change: Callable[[ModelEntry], ModelEntry]) -> ModelEntry:
        with self._locked():
            entries = dict(self._models.read())
            current = entries.get(model_id)
            if current is None:
                raise NotFound(f"model {model_id!r} is not in the catalog; see llorch models ls")
            changed = change(current).model_copy(update={"updated_ms": now_ms()})
            entries[model_id] = changed
            self._models.write(entries)
            return changed

    def set_state(self, model_id: str, state: Lifecycle) -> ModelEntry:
        return self.update(model_id, lambda entry: entry.model_copy(update={"lifecycle": state}))

    def hold(self, model_id: str) -> BinaryIO:
        """A shared lock on ``model_id`` for as long as the returned file stays open: while a
        process serves the model, a delete from any other process sharing this root (a
        second server, ``llorch models --local rm``) is refused."""
        with writing(self.root):
            self.locks_dir.mkdir(parents=True, exist_ok=True)
            handle = self.use_path(model_id).open("a+b")
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        return handle

    def delete(self, model_id: str) -> DeleteOutcome:
        """Remove the entry, then (best effort) the artifacts the catalog owns; Conflict while
        another process holds the model (``hold``)."""
        with self._locked(), self._unheld(model_id):
            entries = dict(self._models.read())
            entry = entries.pop(model_id, None)
            if entry is None:
                return DeleteOutcome(found=False)
            trash: Path | None = None
            problem: str | None = None
            local = Path(entry.local_path)
            if entry.managed and inside(self.models_dir, local) and local.exists():
                # Move the artifacts aside first so the index never names half-deleted files.
                trash = self.trash_dir / f"{local.name}.{uuid.uuid4().hex[:8]}"
                artifacts = self._artifact_dir(local)
                try:
                    self.trash_dir.mkdir(parents=True, exist_ok=True)
                    os.replace(artifacts, trash)
                except OSError as exc:
                    problem = f"could not move {local} aside: {exc.strerror or exc}"
                    trash = None
            try:
                self._models.write(entries)
            except OSError:
                # The entry stays, so its files go back where it says they are.
                if trash is not None:
                    os.replace(trash, artifacts)
                raise
        if trash is not None:
            try:
                shutil.rmtree(trash)
            except OSError as exc:
                problem = f"could not remove {trash}: {exc.strerror or exc}"
        return DeleteOutcome(found=True, problem=problem)

    @contextlib.contextmanager
    def _unheld(self, model_id: str) -> Iterator[None]:
        path = self.use_path(model_id)
        if not path.exists():
            yield
            return
        with path.open("a+b") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict(
                    f"model {model_id} is in use by another llama-orch process sharing the "
                    f"catalog {self.root} (a server whose pool serves it); nothing was deleted",
                    hint="reload that server's pool to another model, or stop that server, "
                    "then delete the model",
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _artifact_dir(self, local: Path) -> Path:
        """The ``models/<slug>`` directory holding ``local``."""
        relative = local.resolve().relative_to(self.models_dir.resolve())
        return self.models_dir / relative.parts[0]

    def exists(self, id_or_ref: str) -> bool:
        return self.resolve_id(id_or_ref) is not None

    def resolve_id(self, id_or_ref: str) -> str | None:
        """The catalog id ``id_or_ref`` names (an id, or any spelling of a ref), if present."""
        entries = self._models.read()
        if id_or_ref in entries:
            return id_or_ref
        try:
            normalized = ref_id(parse_ref(id_or_ref))
        except InvalidModelRef:
            return None
        return normalized if normalized in entries else None

    def locate(self, ref: ModelRef) -> ResolvedModel | None:
        """Read-only (D-CAT-07): the entry of ``ref`` whose bytes are on disk, else None."""
        entry = self._models.read().get(ref_id(ref))
        if entry is None or not os.path.exists(entry.local_path):
            return None
        return ResolvedModel(id=entry.id, local_path=entry.local_path, digest=entry.digest)

    def model_dir(self, model_id: str) -> Path:
        return self.models_dir / slug_of(model_id)

    def staging_for(self, model_id: str) -> Path:
        return self.staging_dir / slug_of(model_id)

    def lock_path(self, model_id: str) -> Path:
        return self.locks_dir / f"{slug_of(model_id)}.lock"

    def use_path(self, model_id: str) -> Path:
        return self.locks_dir / f"{slug_of(model_id)}.use"
