"""The engine index: ``engines.json`` with one EngineEntry per prepared engine (SPEC §9.4).

Written atomically (temporary file, fsync, rename, fsync of the directory) under the catalog
root's writers' lock, with a schema version; an index of another version is refused rather than
overwritten. Behind the small ``EngineIndex`` protocol so the model catalog's store can take it
over.
"""

from __future__ import annotations

import fcntl
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from llama_orch.catalog.store import write_atomic
from llama_orch.provisioners.engine._types import ProvisionError

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class EngineEntry:
    id: str
    engine: str
    version: str
    artifacts: list[str]
    build_ref: str | None = None
    digest: str | None = None
    build_flags: list[str] = field(default_factory=list)
    created_ms: int = 0


class EngineIndex(Protocol):
    def put(self, entry: EngineEntry) -> None: ...

    def get(self, entry_id: str) -> EngineEntry | None: ...

    def list(self, engine: str | None = None) -> list[EngineEntry]: ...


def entry_id(engine: str, version: str, digest: str | None) -> str:
    return f"{engine}:{version}" + (f"@{digest}" if digest else "")


def now_ms() -> int:
    return int(time.time() * 1000)


class FileEngineIndex:
    """``<root>/engines.json``; never holds secrets (entries are paths, versions, digests)."""

    def __init__(self, root: Path) -> None:
        self.path = root.expanduser() / "engines.json"

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            # Truncated by a crash of a build that wrote it in place, or not JSON at all.
            raise self._unreadable(f"it is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise self._unreadable("it is not a JSON object")
        if doc.get("version") != SCHEMA_VERSION:
            raise ProvisionError(
                "index",
                f"{self.path} has schema version {doc.get('version')!r}, this build reads "
                f"{SCHEMA_VERSION}; move the file aside to rebuild the index",
            )
        entries = doc.get("engines", {})
        # Entries by id; a list (or anything else) was not written by this index.
        if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
            raise self._unreadable("its 'engines' is not an object of entries by id")
        return entries

    def _unreadable(self, why: str) -> ProvisionError:
        return ProvisionError(
            "index",
            f"{self.path} is not an engine index this build wrote ({why}); move the file "
            "aside to rebuild the index (engines are prepared again as pools need them)",
        )

    def _entry(self, raw: dict[str, object]) -> EngineEntry:
        try:
            return EngineEntry(**raw)  # type: ignore[arg-type]
        except TypeError as exc:
            raise self._unreadable(f"an entry has other fields: {exc}") from None

    def put(self, entry: EngineEntry) -> None:
        """Record ``entry``; the read-modify-write holds the catalog root's writers' lock, so
        two processes sharing the root (two servers, a server and the CLI) lose no entry."""
        root = self.path.parent
        try:
            root.mkdir(parents=True, exist_ok=True)
            with (root / ".lock").open("a+b") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                entries = self._load()
                entries[entry.id] = asdict(entry)
                data = {"version": SCHEMA_VERSION, "engines": entries}
                write_atomic(self.path, json.dumps(data, indent=2, sort_keys=True).encode())
        except OSError as exc:
            raise ProvisionError(
                "record",
                f"cannot write the engine index {self.path}: {exc.strerror or exc}; make "
                "catalog.root a writable directory with free space",
            ) from exc

    def get(self, entry_id: str) -> EngineEntry | None:
        raw = self._load().get(entry_id)
        return self._entry(raw) if raw is not None else None

    def list(self, engine: str | None = None) -> list[EngineEntry]:
        entries = [self._entry(raw) for raw in self._load().values()]
        return [e for e in entries if engine is None or e.engine == engine]
