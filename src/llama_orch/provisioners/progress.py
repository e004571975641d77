"""Pull progress: bytes done and total, rate and ETA; shared by fetchers, the API and the CLI."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from llama_orch.observability.narration import narrate

#: Fractions of a download at which progress is narrated (never per chunk).
MILESTONES = (0.25, 0.5, 0.75)


class PullState(StrEnum):
    RUNNING = "running"  # bytes are moving (or the source is being asked)
    DONE = "done"  # registered Active in the catalog
    FAILED = "failed"  # stopped; ``error`` holds the typed envelope


@dataclass
class PullProgress:
    """Counters one pull updates from its fetcher thread and anyone may read."""

    model_id: str
    on_total: Callable[[int, int], None] | None = None
    state: PullState = PullState.RUNNING
    bytes_done: int = 0
    bytes_total: int | None = None
    error: dict[str, Any] | None = None
    started_s: float = field(default_factory=time.monotonic)
    finished_s: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _next_milestone: int = 0

    def set_total(self, total: int, already: int = 0) -> None:
        """The fetcher learned the size; ``already`` bytes are on disk from an earlier try."""
        if self.on_total is not None:
            self.on_total(total, already)
        with self._lock:
            self.bytes_total = total
            self.bytes_done = already

    def expect_more(self, count: int) -> None:
        """A download of unknown size is about to write ``count`` more bytes: the same check
        as for a known total (InsufficientSpace when the disk cannot keep its reserve)."""
        if self.on_total is not None:
            with self._lock:
                done = self.bytes_done
            self.on_total(done + count, done)

    def add(self, count: int) -> None:
        with self._lock:
            self.bytes_done += count
            done, total = self.bytes_done, self.bytes_total
            reached = None
            while (
                total
                and self._next_milestone < len(MILESTONES)
                and done >= MILESTONES[self._next_milestone] * total
            ):
                reached = MILESTONES[self._next_milestone]
                self._next_milestone += 1
        if reached is not None:
            elapsed = time.monotonic() - self.started_s
            narrate(
                "catalog",
                "fetch-progress",
                self.model_id,
                f"Fetched {int(reached * 100)}% of {self.model_id} "
                f"({done // 1048576}/{(total or 0) // 1048576} MiB).",
                bytes=done,
                bytes_total=total,
                duration_ms=int(elapsed * 1000),
            )

    def finish(self, state: PullState, error: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.state = state
            self.error = error
            self.finished_s = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            end = self.finished_s if self.finished_s is not None else time.monotonic()
            elapsed = max(end - self.started_s, 1e-6)
            rate = self.bytes_done / elapsed
            eta = None
            if self.bytes_total is not None and rate > 0 and self.state is PullState.RUNNING:
                eta = max(self.bytes_total - self.bytes_done, 0) / rate
            return {
                "state": self.state.value,
                "bytes_done": self.bytes_done,
                "bytes_total": self.bytes_total,
                "rate_bytes_per_s": round(rate, 1),
                "eta_s": None if eta is None else round(eta, 1),
                "elapsed_s": round(elapsed, 3),
                "error": self.error,
            }


#: Finished pulls remembered for GET /v1/catalog/models/{id} and the pools' "last pull failed"
#: line; older ones are forgotten, so refs posted over a long uptime cannot grow the server.
KEEP_FINISHED = 128


class PullBoard:
    """The latest pull of each model id: every running pull and the most recent finished ones.

    A finished pull's outcome stays readable until ``keep_finished`` later pulls have finished
    (a registered model's entry records the outcome for good); a running pull is never
    forgotten, since a delete or a second pull of the same ref asks for it.
    """

    def __init__(self, keep_finished: int = KEEP_FINISHED) -> None:
        self.keep_finished = keep_finished
        self._pulls: dict[str, PullProgress] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str) -> PullProgress | None:
        with self._lock:
            return self._pulls.get(model_id)

    def __getitem__(self, model_id: str) -> PullProgress:
        with self._lock:
            return self._pulls[model_id]

    def __setitem__(self, model_id: str, progress: PullProgress) -> None:
        with self._lock:
            self._pulls.pop(model_id, None)
            self._pulls[model_id] = progress
            self._forget_old()

    def settle(self) -> None:
        """Forget the oldest finished pulls beyond the bound (called as each pull ends)."""
        with self._lock:
            self._forget_old()

    def _forget_old(self) -> None:
        finished = [p for p in self._pulls.values() if p.finished_s is not None]
        excess = len(finished) - self.keep_finished
        if excess > 0:
            finished.sort(key=lambda p: p.finished_s or 0.0)
            for old in finished[:excess]:
                del self._pulls[old.model_id]

    def pop(self, model_id: str) -> PullProgress | None:
        with self._lock:
            return self._pulls.pop(model_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pulls)
