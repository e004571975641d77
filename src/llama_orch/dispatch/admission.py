"""Admission: guardrails, placement of the task on a pool, and enqueue (SPEC §2.2 steps 1-4).

Every refusal is a typed error raised before anything is queued, and is counted in
``tasks_rejected_total`` with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_orch.config import Config
from llama_orch.contracts.api import TaskRequest
from llama_orch.contracts.engine import GenerateRequest
from llama_orch.core.guardrails import check_context, estimate_prompt_tokens
from llama_orch.core.model import JobSpec, NoCapacity
from llama_orch.core.placement import PlacementInput, decide
from llama_orch.dispatch.dispatcher import Dispatcher
from llama_orch.dispatch.tasks import Task
from llama_orch.errors import (
    AdmissionRejected,
    Conflict,
    DeadlineUnmet,
    InvalidParams,
    OrchError,
    PoolUnavailable,
    PoolUnready,
)
from llama_orch.observability.metrics import Metrics
from llama_orch.observability.narration import narrate
from llama_orch.pool.manager import PoolManager
from llama_orch.vocab import Workload


@dataclass(frozen=True, slots=True)
class Admitted:
    task: Task
    queue_position: int
    predicted_start_ms: int
    backoff_ms: int
    session_turns: int
    session_ttl_ms_remaining: int


class Admission:
    def __init__(
        self, config: Config, pools: PoolManager, dispatcher: Dispatcher, metrics: Metrics
    ) -> None:
        self._config = config
        self._pools = pools
        self._dispatcher = dispatcher
        self._metrics = metrics

    def admit(
        self,
        request: TaskRequest,
        *,
        correlation_id: str | None = None,
        identity: str | None = None,
    ) -> Admitted:
        try:
            return self._admit(request, correlation_id, identity)
        except OrchError as exc:
            reason = exc.kind.value
            if reason in _COUNTED_REASONS:
                self._metrics.tasks_rejected_total.labels(request.engine.value, reason).inc()
            narrate(
                "admission",
                "reject",
                request.engine.value,
                f"Refuses task {str(request.task_id)[:8]}: {exc.message}"[:160],
                level="warning",
                task_id=str(request.task_id),
                job_id=str(request.task_id),
                session_id=str(request.session_id),
                correlation_id=correlation_id,
                identity=identity,
                error_kind=reason,
                retry_after_ms=exc.retry_after_ms,
                pool_id=exc.pool_id,
            )
            raise

    def _admit(
        self, request: TaskRequest, correlation_id: str | None, identity: str | None
    ) -> Admitted:
        dispatcher = self._dispatcher
        task_id = str(request.task_id)
        now = dispatcher.now()
        if task_id in dispatcher.tasks:
            raise Conflict(
                f"task_id {task_id} was already submitted; use a new UUID for a new task",
                hint="GET /v1/tasks/{id}/stream reads the existing task",
            )
        if not dispatcher.tasks.has_room(now):
            raise AdmissionRejected(
                "the server tracks too many tasks right now; retry shortly",
                retry_after_ms=1000,
                policy_label="server-capacity",
            )
        prompt = self._prompt_of(request)
        if request.deadline_ms <= 0:
            raise DeadlineUnmet(
                f"deadline_ms must be positive, got {request.deadline_ms}; it counts "
                "milliseconds from admission"
            )
        pool_id = self._place(request, prompt)
        lane = dispatcher.lanes[pool_id]
        pool = lane.pool

        session = dispatcher.sessions.get(str(request.session_id), now)
        if session is not None and session.turns >= dispatcher.sessions.max_turns:
            ttl_ms = dispatcher.sessions.ttl_remaining_ms(session, now)
            raise AdmissionRejected(
                f"session {request.session_id} used all {session.turns} turns; start a new "
                "session_id or wait for this one to expire",
                retriable=False,
                retry_after_ms=ttl_ms,
                policy_label="session-budget",
                pool_id=pool_id,
                engine=request.engine.value,
            )

        expected = request.expected_tokens or request.max_tokens
        position_if_queued = len(lane.queue)
        predicted = dispatcher.predicted_start_ms(lane, position_if_queued, expected)
        if predicted > request.deadline_ms:
            raise DeadlineUnmet(
                f"predicted start in {predicted} ms misses deadline_ms {request.deadline_ms}; "
                "allow more time or retry when the queue is shorter",
                retry_after_ms=predicted - request.deadline_ms,
                pool_id=pool_id,
                engine=request.engine.value,
            )

        sampling = request.sampling
        task = Task(
            id=task_id,
            session_id=str(request.session_id),
            pool_id=pool_id,
            engine=request.engine,
            model=request.model_ref,
            priority=request.priority,
            request=GenerateRequest(
                task_id=task_id,
                prompt=prompt,
                max_tokens=request.max_tokens,
                model=pool.config.model,
                seed=request.seed,
                temperature=sampling.temperature if sampling else None,
                top_p=sampling.top_p if sampling else None,
                top_k=sampling.top_k if sampling else None,
                repeat_penalty=sampling.repeat_penalty if sampling else None,
                stop=tuple(sampling.stop or ()) if sampling else (),
                determinism=request.determinism,
                session_id=str(request.session_id),
                correlation_id=correlation_id,
            ),
            admitted_at=now,
            deadline_at=now + request.deadline_ms / 1000,
            expected_tokens=expected,
            correlation_id=correlation_id,
            identity=identity,
            predicted_start_ms=predicted,
        )
        position = dispatcher.enqueue(task)
        session = dispatcher.sessions.get_or_create(task.session_id, now)
        session.turns += 1
        session.last_used_at = now
        self._metrics.tasks_enqueued_total.labels(
            request.engine.value,
            pool.engine_version or "unknown",
            pool_id,
            "none",
            request.priority.value,
        ).inc()
        narrate(
            "admission",
            "admit",
            pool_id,
            f"Admits task {task_id[:8]} to {pool_id} at position {position}, "
            f"start in ~{predicted} ms.",
            task_id=task_id,
            job_id=task_id,
            session_id=task.session_id,
            pool_id=pool_id,
            engine=request.engine.value,
            correlation_id=correlation_id,
            identity=identity,
            queue_position=position,
            predicted_start_ms=predicted,
            priority=request.priority.value,
            ctx=request.ctx,
            model_id=request.model_ref,
        )
        return Admitted(
            task=task,
            queue_position=position,
            predicted_start_ms=predicted,
            backoff_ms=0,
            session_turns=session.turns,
            session_ttl_ms_remaining=dispatcher.sessions.ttl_remaining_ms(session, now),
        )

    def _prompt_of(self, request: TaskRequest) -> str:
        if request.workload is not Workload.COMPLETION:
            raise InvalidParams(
                f"workload {request.workload.value} is not served by any configured engine; "
                "use workload: completion",
                engine=request.engine.value,
            )
        if request.prompt is None:
            raise InvalidParams("prompt is required for workload completion")
        limit = self._config.server.max_prompt_bytes
        size = len(request.prompt.encode())
        if size > limit:
            raise InvalidParams(
                f"prompt is {size} bytes; this server accepts at most {limit} bytes",
                engine=request.engine.value,
            )
        return request.prompt

    def _place(self, request: TaskRequest, prompt: str) -> str:
        """Pick the pool through core ``decide`` after the context guardrails."""
        dispatcher = self._dispatcher
        matching = [
            p
            for p in self._pools.pools.values()
            if p.config.engine is request.engine and p.config.model == request.model_ref
        ]
        if not matching:
            served = sorted(
                {f"{p.config.engine.value}:{p.config.model}" for p in self._pools.pools.values()}
            )
            raise PoolUnavailable(
                f"no pool serves engine {request.engine.value} with model "
                f"{request.model_ref!r}; served: {', '.join(served)}",
                engine=request.engine.value,
                retriable=False,
            )
        model_ctx_max = max(p.ctx_max for p in matching)
        violation = check_context(
            ctx=request.ctx,
            model_ctx_max=model_ctx_max,
            prompt_tokens=estimate_prompt_tokens(len(prompt.encode())),
            max_tokens=request.max_tokens,
        )
        if violation is not None:
            raise InvalidParams(
                f"{violation.field}: {violation.message}", engine=request.engine.value
            )
        job = JobSpec(
            priority=request.priority,
            engine=request.engine,
            model_id=request.model_ref,
            required_ctx=request.ctx,
            expected_tokens=request.expected_tokens,
            session_id=str(request.session_id),
        )
        snapshots = tuple(
            self._pools.snapshot(p.id, queued=len(dispatcher.lanes[p.id].queue))
            for p in self._pools.pools.values()
        )
        decision = decide(PlacementInput(snapshots, job))
        if isinstance(decision, NoCapacity):
            errors = [p.last_error for p in matching if p.last_error]
            detail = f" ({errors[0]})" if errors else ""
            if decision.unready:
                raise PoolUnready(
                    f"pool {matching[0].id} for {request.model_ref!r} is not Ready yet{detail}; "
                    "retry shortly",
                    retry_after_ms=2000,
                    pool_id=matching[0].id,
                    engine=request.engine.value,
                )
            raise PoolUnavailable(
                f"no pool can take this task: {decision.reason}{detail}",
                retry_after_ms=2000,
                engine=request.engine.value,
            )
        return decision.pool_id


_COUNTED_REASONS = frozenset(
    {
        "ADMISSION_REJECT",
        "QUEUE_FULL_DROP_LRU",
        "INVALID_PARAMS",
        "POOL_UNREADY",
        "POOL_UNAVAILABLE",
        "REPLICA_EXHAUSTED",
    }
)
