"""Supervisor: the one owner of every background coroutine.

Two kinds of work run in the background:

- *loops* (a pool's dispatch loop, a replica's probe loop, the GPU sampler) run for the life of
  the server. A loop that raises is logged with its trace, counted in
  ``background_restarts_total{loop}`` and started again after a backoff that doubles on each
  crash in a row (reset once a run lasted ``stable_s``). A loop that returns is finished.
- *jobs* (a task's runner, an engine-side cancel) end on their own. An error in one is logged.
- *owned* work (an engine's supervision, a drain or reload) runs until the component that
  started it stops it. An error in one is logged like a job's; ``drain_jobs`` does not wait
  for it (it would only end at the grace deadline, holding every shutdown that long).

``stop(grace_s)`` cancels the loops, gives the jobs ``grace_s`` seconds to end, then cancels
what is left, owned work included, and waits for it, so nothing outlives the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from llama_orch.observability.metrics import Metrics
from llama_orch.observability.narration import narrate

LoopFactory = Callable[[], Coroutine[Any, Any, None]]


class Supervisor:
    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        backoff_s: float = 0.1,
        max_backoff_s: float = 10.0,
        stable_s: float = 60.0,
    ) -> None:
        self._metrics = metrics
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._stable_s = stable_s
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._jobs: set[asyncio.Task[Any]] = set()
        self._owned: set[asyncio.Task[Any]] = set()
        #: Restarts per loop name since the supervisor was made.
        self.restarts: dict[str, int] = {}
        #: Jobs that ended with an error (each one is logged).
        self.failed_jobs = 0

    @property
    def loops(self) -> list[str]:
        return sorted(name for name, task in self._loops.items() if not task.done())

    def loop(self, name: str, factory: LoopFactory) -> None:
        """Run ``factory()`` until it returns, restarting it with backoff whenever it raises."""
        if name in self._loops and not self._loops[name].done():
            raise RuntimeError(f"background loop {name!r} already runs")
        self._loops[name] = asyncio.create_task(self._keep(name, factory), name=name)

    def job(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` once; it is awaited (or canceled) by ``stop``."""
        task = asyncio.create_task(coro, name=name)
        self._jobs.add(task)
        task.add_done_callback(self._job_done)
        return task

    def owned(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` until its owner cancels it; ``stop`` cancels it if the owner did not."""
        task = asyncio.create_task(coro, name=name)
        self._owned.add(task)
        task.add_done_callback(self._job_done)
        return task

    def _job_done(self, task: asyncio.Task[Any]) -> None:
        self._jobs.discard(task)
        self._owned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failed_jobs += 1
            self._crashed(task.get_name(), task.exception(), restart_in_s=None)

    async def _keep(self, name: str, factory: LoopFactory) -> None:
        delay = self._backoff_s
        while True:
            began = time.monotonic()
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - began >= self._stable_s:
                    delay = self._backoff_s
                self._crashed(name, exc, restart_in_s=delay)
                self.restarts[name] = self.restarts.get(name, 0) + 1
                if self._metrics is not None:
                    self._metrics.background_restarts_total.labels(name).inc()
                await asyncio.sleep(delay)
                delay = min(self._max_backoff_s, delay * 2)

    def _crashed(self, name: str, exc: BaseException | None, *, restart_in_s: float | None) -> None:
        # The restart delay first: a long error is what the sink's cut shortens.
        restart = f", restarts in {restart_in_s * 1000:.0f} ms" if restart_in_s is not None else ""
        human = f"Background {name} crashed{restart}: {type(exc).__name__}: {exc}"
        narrate(
            "supervisor",
            "crash",
            name,
            human,
            level="error",
            loop=name,
            error_kind=type(exc).__name__,
            exc_info=exc,
        )

    async def cancel_loops(self, names: Iterable[str]) -> None:
        """Stop some loops now (a component shutting down its own)."""
        tasks = [t for t in (self._loops.pop(n, None) for n in names) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def drain_jobs(self, grace_s: float) -> None:
        """Let the jobs end within ``grace_s`` seconds, then cancel the rest and wait for them."""
        jobs = list(self._jobs)
        if not jobs:
            return
        _, pending = await asyncio.wait(jobs, timeout=grace_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def stop(self, grace_s: float = 5.0) -> None:
        """Cancel the loops; let the jobs end within ``grace_s`` seconds, then cancel them."""
        await self.cancel_loops(list(self._loops))
        await self.drain_jobs(grace_s)
        owned = list(self._owned)
        for task in owned:
            task.cancel()
        for task in owned:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
