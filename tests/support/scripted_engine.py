"""A scripted engine (simulated): an ``EngineAdapter`` whose streams move only when a test says.

Each submitted request gets a script queue; ``tokens``, ``end`` and ``fail`` push the next
event of that task's stream. Used to drive dispatch through exact event orders, with no
timing involved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from llama_orch.contracts.engine import (
    EngineEvent,
    GenerateRequest,
    WorkerHealth,
    WorkerProps,
)
from llama_orch.errors import WorkerError, WorkerReset
from llama_orch.vocab import Engine

_END = object()


@dataclass
class _Script:
    queue: asyncio.Queue[EngineEvent | WorkerError | object] = field(default_factory=asyncio.Queue)
    sent: int = 0


class ScriptedEngine:
    """Simulated engine with ``slots`` slots; streams advance only through its script."""

    def __init__(self, slots: int = 2) -> None:
        self._slots = slots
        self.scripts: dict[str, _Script] = {}
        #: Task ids whose stream was closed before the script ended it.
        self.closed_early: list[str] = []

    @property
    def engine(self) -> Engine:
        return Engine.MOCK

    async def health(self) -> WorkerHealth:
        return WorkerHealth(live=True, ready=True, detail="scripted engine (simulated)")

    async def props(self) -> WorkerProps:
        return WorkerProps(slots_total=self._slots, ctx_max=8192, simulated=True)

    async def engine_version(self) -> str:
        return "scripted-1"

    def _script(self, task_id: str) -> _Script:
        return self.scripts.setdefault(task_id, _Script())

    def tokens(self, task_id: str, count: int) -> None:
        script = self._script(task_id)
        texts = tuple(f"<{script.sent + k}>" for k in range(count))
        script.queue.put_nowait(EngineEvent("tokens", texts, script.sent))
        script.sent += count

    def end(self, task_id: str) -> None:
        self._script(task_id).queue.put_nowait(_END)

    def fail(self, task_id: str) -> None:
        self._script(task_id).queue.put_nowait(WorkerReset("scripted engine reset (simulated)"))

    async def submit(self, request: GenerateRequest) -> AsyncGenerator[EngineEvent, None]:
        script = self._script(request.task_id)
        finished = False
        try:
            yield EngineEvent("started", data={"tokens_in": 1, "simulated": True})
            while True:
                item = await script.queue.get()
                if item is _END:
                    finished = True
                    yield EngineEvent("end", data={"tokens_out": script.sent})
                    return
                if isinstance(item, WorkerError):
                    raise item
                assert isinstance(item, EngineEvent)
                yield item
        finally:
            if not finished:
                self.closed_early.append(request.task_id)

    async def cancel(self, task_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None
