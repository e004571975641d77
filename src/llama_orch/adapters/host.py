"""AdapterHost: the in-process registry and facade through which everything reaches an engine.

Registry ``(pool_id, replica_id) -> adapter`` (ORCH-3600); facade ``submit``, ``cancel``,
``health`` and ``props`` (ORCH-3601); a capability snapshot cache per replica (ORCH-3603).
The server and dispatcher never hold an adapter themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from llama_orch.contracts.engine import (
    EngineAdapter,
    EngineEvent,
    GenerateRequest,
    WorkerHealth,
    WorkerProps,
)
from llama_orch.errors import WorkerError, WorkerInternal, WorkerUnavailable
from llama_orch.observability.narration import narrate

ReplicaKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class CapabilitySnapshot:
    engine: str
    engine_version: str
    props: WorkerProps


class AdapterHost:
    def __init__(self) -> None:
        self._adapters: dict[ReplicaKey, EngineAdapter] = {}
        self._capabilities: dict[ReplicaKey, CapabilitySnapshot] = {}

    def bind(self, pool_id: str, replica_id: str, adapter: EngineAdapter) -> None:
        """Bind (or rebind on reload) one replica's adapter."""
        self._adapters[(pool_id, replica_id)] = adapter
        self._capabilities.pop((pool_id, replica_id), None)

    async def unbind(self, pool_id: str, replica_id: str) -> None:
        adapter = self._adapters.pop((pool_id, replica_id), None)
        self._capabilities.pop((pool_id, replica_id), None)
        if adapter is not None:
            await adapter.aclose()

    def _adapter(self, pool_id: str, replica_id: str) -> EngineAdapter:
        try:
            return self._adapters[(pool_id, replica_id)]
        except KeyError:
            raise WorkerUnavailable(
                f"no adapter bound for pool {pool_id} replica {replica_id}", pool_id=pool_id
            ) from None

    async def health(self, pool_id: str, replica_id: str) -> WorkerHealth:
        return await self._adapter(pool_id, replica_id).health()

    async def refresh_capabilities(self, pool_id: str, replica_id: str) -> CapabilitySnapshot:
        adapter = self._adapter(pool_id, replica_id)
        snapshot = CapabilitySnapshot(
            engine=adapter.engine.value,
            engine_version=await adapter.engine_version(),
            props=await adapter.props(),
        )
        self._capabilities[(pool_id, replica_id)] = snapshot
        return snapshot

    def capabilities(self, pool_id: str, replica_id: str) -> CapabilitySnapshot | None:
        return self._capabilities.get((pool_id, replica_id))

    async def props(self, pool_id: str, replica_id: str) -> WorkerProps:
        return await self._adapter(pool_id, replica_id).props()

    async def submit(
        self, pool_id: str, replica_id: str, request: GenerateRequest
    ) -> AsyncIterator[EngineEvent]:
        """Stream one request; every failure surfaces as a ``WorkerError`` (ORCH-3602)."""
        adapter = self._adapter(pool_id, replica_id)
        narrate(
            "adapter-host",
            "submit",
            adapter.engine.value,
            f"Sends task {request.task_id[:8]} to {pool_id}/{replica_id}.",
            task_id=request.task_id,
            job_id=request.task_id,
            pool_id=pool_id,
            replica_id=replica_id,
            correlation_id=request.correlation_id,
        )
        stream = adapter.submit(request)
        try:
            async for event in stream:
                yield event
        except WorkerError:
            raise
        except Exception as exc:
            # An adapter bug must not take the server down; the client sees INTERNAL.
            raise WorkerInternal(
                f"{adapter.engine.value} adapter failed: {type(exc).__name__}",
                pool_id=pool_id,
                engine=adapter.engine.value,
            ) from exc
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def cancel(self, pool_id: str, replica_id: str, task_id: str) -> None:
        adapter = self._adapters.get((pool_id, replica_id))
        if adapter is None:
            return
        narrate(
            "adapter-host",
            "cancel",
            adapter.engine.value,
            f"Cancels task {task_id[:8]} on {pool_id}/{replica_id}.",
            task_id=task_id,
            job_id=task_id,
            pool_id=pool_id,
            replica_id=replica_id,
        )
        await adapter.cancel(task_id)

    async def aclose(self) -> None:
        for key in list(self._adapters):
            await self.unbind(*key)
