"""AdapterHost: the in-process registry and facade through which everything reaches an engine.

Registry ``(pool_id, replica_id) -> adapter`` (ORCH-3600); facade ``submit``, ``cancel``,
``health`` and ``props`` (ORCH-3601); per replica a retry policy for idempotent calls and a
circuit breaker (ORCH-3602); a capability snapshot cache per replica (ORCH-3603), which feeds
``/v1/capabilities``. The server and dispatcher never hold an adapter themselves. Retries and
breaker trips are counted per replica and, given a ``Metrics``, in ``adapter_retries_total`` and
``adapter_breaker_trips_total{engine,pool_id}`` (D-HOST-01).

Resilience rules:
- ``health``, ``props`` and ``engine_version`` are idempotent: retried with capped, jittered
  backoff. ``submit`` is never retried, before or after the first token (D-HOST-02): a failed
  generation surfaces to the dispatcher, which ends the task with an SSE ``error`` frame.
- Engine failures (transport, 5xx, broken or truncated streams) count against the replica's
  breaker; a client's own mistake (``WorkerInvalidParams``) does not. While the breaker is open
  submissions fail fast and health reports not ready, so the pool manager turns the replica
  Unready; after the cool-down the next probe or submission is the trial.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from llama_orch.adapters._base import HttpAdapter, Prestarted
from llama_orch.adapters._breaker import BreakerPolicy, CircuitBreaker, Clock
from llama_orch.adapters._http import RetryPolicy, with_retries
from llama_orch.contracts.engine import (
    BreakerState,
    EmbedRequest,
    EmbedResult,
    EngineAdapter,
    EngineEvent,
    GenerateRequest,
    TokenSink,
    WorkerHealth,
    WorkerProps,
)
from llama_orch.errors import (
    WorkerError,
    WorkerInternal,
    WorkerInvalidParams,
    WorkerUnavailable,
)
from llama_orch.observability.metrics import AdapterMetrics, Metrics
from llama_orch.observability.narration import narrate

__all__ = ["AdapterHost", "BreakerPolicy", "CapabilitySnapshot", "Prestarted", "RetryPolicy"]

ReplicaKey = tuple[str, str]
T = TypeVar("T")

#: Failures that say nothing about the engine's health.
_NOT_ENGINE_FAULTS = (WorkerInvalidParams,)
#: Default for replicas bound without a policy (the mock engine, tests): no retries.
_NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True, slots=True)
class CapabilitySnapshot:
    """What one replica's engine last reported; ``/v1/capabilities`` is built from these."""

    engine: str
    engine_version: str
    props: WorkerProps

    @property
    def simulated(self) -> bool:
        return self.props.simulated


@dataclass(slots=True)
class _Binding:
    adapter: EngineAdapter
    retry: RetryPolicy
    breaker: CircuitBreaker = field(init=False)
    #: Retries spent on idempotent calls and breaker trips since binding (D-HOST-01).
    retries: int = 0
    trips: int = 0
    #: The (engine, pool) counters these feed, when the host was given a ``Metrics``.
    metrics: AdapterMetrics | None = None


class AdapterHost:
    def __init__(self, *, clock: Clock = time.monotonic, metrics: Metrics | None = None) -> None:
        self._clock = clock
        self._metrics = metrics
        self._bindings: dict[ReplicaKey, _Binding] = {}
        self._capabilities: dict[ReplicaKey, CapabilitySnapshot] = {}
        self._fault_listeners: list[Callable[[str, str, WorkerError], None]] = []

    def on_engine_fault(self, listener: Callable[[str, str, WorkerError], None]) -> None:
        """Call ``listener(pool_id, replica_id, error)`` when a generation fails on the engine,
        before the failure reaches the dispatcher (a supervisor can stop placement first)."""
        self._fault_listeners.append(listener)

    def bind(
        self,
        pool_id: str,
        replica_id: str,
        adapter: EngineAdapter,
        *,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
    ) -> None:
        """Bind (or rebind on reload) one replica's adapter, with a fresh breaker."""
        key = (pool_id, replica_id)
        engine = adapter.engine.value
        binding = _Binding(adapter, retry or _NO_RETRY)
        if self._metrics is not None:
            binding.metrics = self._metrics.bind_adapter(engine, pool_id)

        def on_change(old: BreakerState, new: BreakerState, why: str) -> None:
            if new == "open":
                binding.trips += 1
                if binding.metrics is not None:
                    binding.metrics.breaker_trips.inc()
            narrate(
                "adapter-host",
                "breaker",
                engine,
                f"Circuit of {pool_id}/{replica_id} goes {old} -> {new}: {why}",
                level="warning" if new == "open" else "info",
                pool_id=pool_id,
                replica_id=replica_id,
                engine=engine,
                breaker=new,
            )

        binding.breaker = CircuitBreaker(breaker or BreakerPolicy(), self._clock, on_change)
        self._bindings[key] = binding
        self._capabilities.pop(key, None)

    async def unbind(self, pool_id: str, replica_id: str) -> None:
        binding = self._bindings.pop((pool_id, replica_id), None)
        self._capabilities.pop((pool_id, replica_id), None)
        if binding is not None:
            await binding.adapter.aclose()

    def _binding(self, pool_id: str, replica_id: str) -> _Binding:
        try:
            return self._bindings[(pool_id, replica_id)]
        except KeyError:
            raise WorkerUnavailable(
                f"no adapter bound for pool {pool_id} replica {replica_id}", pool_id=pool_id
            ) from None

    def _adapter(self, pool_id: str, replica_id: str) -> EngineAdapter:
        return self._binding(pool_id, replica_id).adapter

    def breaker_state(self, pool_id: str, replica_id: str) -> BreakerState:
        return self._binding(pool_id, replica_id).breaker.state

    def retries_spent(self, pool_id: str, replica_id: str) -> int:
        return self._binding(pool_id, replica_id).retries

    def breaker_trips(self, pool_id: str, replica_id: str) -> int:
        return self._binding(pool_id, replica_id).trips

    async def _idempotent(self, binding: _Binding, call: Callable[[], Awaitable[T]]) -> T:
        def count(attempt: int, exc: BaseException, delay: float) -> None:
            binding.retries += 1
            if binding.metrics is not None:
                binding.metrics.retries.inc()
            engine = binding.adapter.engine.value
            kind = exc.kind.value if isinstance(exc, WorkerError) else type(exc).__name__
            narrate(
                "adapter-host",
                "retry",
                engine,
                f"Retries a {engine} call after attempt {attempt} failed with {kind}.",
                engine=engine,
                error_kind=kind,
                backoff_ms=int(delay * 1000),
                attempt=attempt,
            )

        try:
            result = await with_retries(call, binding.retry, on_retry=count)
        except WorkerError as exc:
            if not isinstance(exc, _NOT_ENGINE_FAULTS):
                binding.breaker.record_failure(exc.message)
            raise
        except Exception as exc:
            # An adapter bug must not kill the probe loop; it reads as a failed probe.
            engine = binding.adapter.engine.value
            error = WorkerInternal(f"{engine} adapter failed: {type(exc).__name__}", engine=engine)
            binding.breaker.record_failure(error.message)
            raise error from exc
        return result

    # -- facade --------------------------------------------------------------------------------

    async def health(self, pool_id: str, replica_id: str) -> WorkerHealth:
        """The replica's health with its breaker state; engine failures read as not live."""
        binding = self._binding(pool_id, replica_id)
        breaker = binding.breaker
        if not breaker.allow():
            return WorkerHealth(
                live=False,
                ready=False,
                detail=f"circuit open for {breaker.retry_after_s:.0f} s more "
                f"after repeated failures ({breaker.last_reason})",
                breaker="open",
            )
        try:
            health = await self._idempotent(binding, binding.adapter.health)
        except WorkerError as exc:
            return WorkerHealth(live=False, ready=False, detail=exc.message, breaker=breaker.state)
        if health.ready:
            breaker.record_success()
        return replace(health, breaker=breaker.state)

    async def refresh_capabilities(self, pool_id: str, replica_id: str) -> CapabilitySnapshot:
        binding = self._binding(pool_id, replica_id)
        adapter = binding.adapter
        props = await self._idempotent(binding, adapter.props)
        snapshot = CapabilitySnapshot(
            engine=adapter.engine.value,
            engine_version=await self._idempotent(binding, adapter.engine_version),
            props=props,
        )
        self._capabilities[(pool_id, replica_id)] = snapshot
        return snapshot

    def capabilities(self, pool_id: str, replica_id: str) -> CapabilitySnapshot | None:
        """The cached snapshot of one replica; None until a probe filled it (ORCH-3603)."""
        return self._capabilities.get((pool_id, replica_id))

    def pool_capabilities(self, pool_id: str) -> dict[str, CapabilitySnapshot]:
        """Every cached snapshot of one pool, by replica id."""
        return {r: snap for (p, r), snap in self._capabilities.items() if p == pool_id}

    async def props(self, pool_id: str, replica_id: str) -> WorkerProps:
        binding = self._binding(pool_id, replica_id)
        return await self._idempotent(binding, binding.adapter.props)

    def prestart(
        self, pool_id: str, replica_id: str, request: GenerateRequest
    ) -> Prestarted | None:
        """Send the request at once when the engine's client can do so without waiting (an HTTP
        engine with a kept-alive connection free), else None; ``submit`` then takes the result.

        The dispatcher calls it in the step that places the task, so the engine starts before
        the task's runner has taken its first step (one event-loop turn, milliseconds under
        load). Anything that would fail is left to ``submit``, which reports it."""
        try:
            binding, fields = self._call(
                pool_id, replica_id, request.task_id, request.correlation_id
            )
            adapter = binding.adapter
            if not isinstance(adapter, HttpAdapter):
                return None
            prestarted = adapter.prestart(request)
        except Exception:
            # Not lost: ``submit`` makes the same call and reports what fails.
            return None
        if prestarted is not None:
            self._narrate_submit(adapter.engine.value, request, pool_id, replica_id, fields)
        return prestarted

    def _narrate_submit(
        self,
        engine: str,
        request: GenerateRequest,
        pool_id: str,
        replica_id: str,
        fields: dict[str, Any],
    ) -> None:
        narrate(
            "adapter-host",
            "submit",
            engine,
            f"Sends task {request.task_id[:8]} to {pool_id}/{replica_id}.",
            **fields,
        )

    async def submit(
        self,
        pool_id: str,
        replica_id: str,
        request: GenerateRequest,
        prestarted: Prestarted | None = None,
    ) -> AsyncGenerator[EngineEvent, TokenSink | None]:
        """Stream one request (``prestarted``: already sent by ``prestart``); every failure
        surfaces as a ``WorkerError`` (ORCH-3602). A ``TokenSink`` sent in after ``started``
        is passed on to the adapter."""
        binding, fields = self._call(pool_id, replica_id, request.task_id, request.correlation_id)
        adapter = binding.adapter
        engine = adapter.engine.value
        breaker = binding.breaker
        if prestarted is not None and isinstance(adapter, HttpAdapter):
            stream = adapter.submit(request, prestarted)
        else:
            self._narrate_submit(engine, request, pool_id, replica_id, fields)
            stream = adapter.submit(request)
        try:
            sent: TokenSink | None = None
            while True:
                try:
                    event = await stream.asend(sent)
                except StopAsyncIteration:
                    break
                if event.kind == "error":
                    raise event.error or WorkerInternal(
                        f"{engine} reported an error without details", engine=engine
                    )
                if event.kind == "end":
                    breaker.record_success()
                sent = yield event
        except Exception as exc:
            error = self._submit_failed(binding, exc, fields)
            if error is exc:
                raise
            raise error from exc
        finally:
            await stream.aclose()

    def _call(
        self, pool_id: str, replica_id: str, task_id: str, correlation_id: str | None
    ) -> tuple[_Binding, dict[str, Any]]:
        """The replica's binding and the call's log fields; refused while its circuit is open."""
        binding = self._binding(pool_id, replica_id)
        engine = binding.adapter.engine.value
        breaker = binding.breaker
        if not breaker.allow():
            wait_ms = max(1, math.ceil(breaker.retry_after_s * 1000))
            raise WorkerUnavailable(
                f"replica {pool_id}/{replica_id} is paused after repeated engine failures "
                f"(circuit open, {wait_ms} ms left): {breaker.last_reason}",
                pool_id=pool_id,
                engine=engine,
                retry_after_ms=wait_ms,
            )
        fields: dict[str, Any] = {
            "task_id": task_id,
            "job_id": task_id,
            "pool_id": pool_id,
            "replica_id": replica_id,
            "engine": engine,
            "correlation_id": correlation_id,
        }
        return binding, fields

    async def embed(self, pool_id: str, replica_id: str, request: EmbedRequest) -> EmbedResult:
        """One embedding or rerank batch; never retried, failures count like a generation's."""
        binding, fields = self._call(pool_id, replica_id, request.task_id, request.correlation_id)
        try:
            result = await binding.adapter.embed(request)
        except Exception as exc:
            error = self._submit_failed(binding, exc, fields)
            if error is exc:
                raise
            raise error from exc
        binding.breaker.record_success()
        return result

    def _submit_failed(
        self, binding: _Binding, exc: Exception, fields: dict[str, Any]
    ) -> WorkerError:
        """Record a failed call; an adapter bug becomes ``INTERNAL`` (never a server crash)."""
        if isinstance(exc, WorkerError):
            self._on_submit_error(binding, exc, fields)
            return exc
        engine = binding.adapter.engine.value
        # An adapter bug must not take the server down; the client sees INTERNAL.
        error = WorkerInternal(
            f"{engine} adapter failed: {type(exc).__name__}",
            pool_id=fields["pool_id"],
            engine=engine,
        )
        self._on_submit_error(binding, error, fields)
        return error

    def _on_submit_error(self, binding: _Binding, exc: WorkerError, fields: dict[str, Any]) -> None:
        if not isinstance(exc, _NOT_ENGINE_FAULTS):
            binding.breaker.record_failure(exc.message)
            for listener in self._fault_listeners:
                listener(fields["pool_id"], fields["replica_id"], exc)
        engine = binding.adapter.engine.value
        human = f"Task {str(fields['task_id'])[:8]} fails on the engine with {exc.kind.value}."
        narrate(
            "adapter-host",
            "submit-error",
            engine,
            human,
            level="warning",
            **fields,
            error_kind=exc.kind.value,
        )

    async def cancel(self, pool_id: str, replica_id: str, task_id: str) -> None:
        binding = self._bindings.get((pool_id, replica_id))
        if binding is None:
            return
        adapter = binding.adapter
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
        for key in list(self._bindings):
            await self.unbind(*key)
