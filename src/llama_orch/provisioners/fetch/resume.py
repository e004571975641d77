"""Resumable downloads: append to ``<name>.part`` from where an earlier try stopped, then rename.

A source is a function ``open(offset) -> Body``: it starts the transfer at ``offset`` (a Range
request) and says whether it honoured the offset. Transient failures are retried, each retry
resuming from the bytes already on disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llama_orch.errors import FetchFailed
from llama_orch.provisioners.fetch.base import OpenPart, open_part, translate_disk_full
from llama_orch.provisioners.progress import PullProgress


@dataclass(frozen=True, slots=True)
class Body:
    total: int | None
    #: True when the body starts at the requested offset; False means "from byte 0".
    resumed: bool
    chunks: Iterator[bytes]
    close: Callable[[], None]


class Transient(Exception):
    """A failure worth another try (5xx, reset connection, truncated body)."""


def download(
    final: Path,
    open_body: Callable[[int], Body],
    progress: PullProgress,
    *,
    attempts: int = 4,
    backoff_s: float = 0.2,
    opener: OpenPart = open_part,
) -> Path:
    """Fetch into ``final.part`` (resuming), check the length, rename to ``final``."""
    part = final.with_name(final.name + ".part")
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
            if body.total is not None:
                progress.set_total(body.total, offset)
            try:
                with opener(part, "ab" if offset else "wb") as handle:
                    for chunk in body.chunks:
                        handle.write(chunk)
                        progress.add(len(chunk))
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise translate_disk_full(exc, part) from exc
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
        return final
    raise FetchFailed(
        f"could not download {final.name} after {attempts} tries: {last}",
        hint="pull again later; the bytes already fetched are kept and the download resumes",
    )
