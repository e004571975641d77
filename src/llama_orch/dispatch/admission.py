"""Admission: guardrails, placement of the task on a pool, and enqueue (SPEC §2.2 steps 1-4).

Every refusal is a typed error raised before anything is queued, and is counted in
``tasks_rejected_total`` with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llama_orch.config import Config, PoolConfig
from llama_orch.contracts.api import TaskRequest
from llama_orch.contracts.engine import ChatMessage, EmbedRequest, GenerateRequest
from llama_orch.core.budgets import (
    TASK_FIELDS,
    BudgetLimits,
    BudgetUsage,
    FieldNames,
    affordable_tokens,
    check_budget,
)
from llama_orch.core.embedding import estimate_tokens
from llama_orch.core.guardrails import (
    GuardViolation,
    check_context,
    check_overrides,
    estimate_prompt_tokens,
)
from llama_orch.core.model import (
    AUTO,
    Assigned,
    JobSpec,
    ModelRequirements,
    PlacementOverrides,
)
from llama_orch.core.ratelimit import TokenBucket
from llama_orch.dispatch.dispatcher import Dispatcher
from llama_orch.dispatch.lanes import PoolLane
from llama_orch.dispatch.sessions import budget_limits
from llama_orch.dispatch.tasks import Task
from llama_orch.errors import (
    AdmissionRejected,
    Conflict,
    DeadlineUnmet,
    InvalidParams,
    OrchError,
    PoolUnavailable,
    PoolUnready,
    ServerStopping,
)
from llama_orch.observability.metrics import Metrics
from llama_orch.observability.narration import narrate
from llama_orch.pool.manager import PoolManager, PoolRuntime
from llama_orch.vocab import PlacementMode, Priority, Workload

#: Retry advice for a task whose model a reload is bringing: new replicas start in seconds.
RELOAD_RETRY_AFTER_MS = 2000


@dataclass(frozen=True, slots=True)
class Admitted:
    task_id: str
    pool_id: str
    session_id: str
    queue_position: int
    predicted_start_ms: int
    #: The session's enabled budgets as they stand after this task's reservation.
    budgets: dict[str, int | float] = field(default_factory=dict)
    #: The task's ``max_tokens``: the request's, or less when admission fitted it to a budget.
    max_tokens: int = 0


class Admission:
    def __init__(
        self, config: Config, pools: PoolManager, dispatcher: Dispatcher, metrics: Metrics
    ) -> None:
        #: Maps a task's model_ref (ref, catalog id or alias) to the pool's model string.
        self._models = pools.models
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
        messages: tuple[ChatMessage, ...] | None = None,
        names: FieldNames = TASK_FIELDS,
        fit_to_budget: bool = False,
    ) -> Admitted:
        """``messages``: a chat, for front doors whose engines take one (the prompt is then its
        rendering, used for guardrails and by completion-only engines); ``names``: what the
        caller calls the task's length and session, as session refusals name them;
        ``fit_to_budget``: the caller set no length, so ``max_tokens`` is cut to what the
        session's budget affords on the pool the task lands on rather than refused."""
        try:
            return self._admit(request, correlation_id, identity, messages, names, fit_to_budget)
        except OrchError as exc:
            reason = exc.kind.value
            if reason in _COUNTED_REASONS:
                self._metrics.rejected(request.engine.value, reason).inc()
            narrate(
                "admission",
                "reject",
                request.engine.value,
                f"Refuses task {str(request.task_id)[:8]}: {exc.message}",
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
        self,
        request: TaskRequest,
        correlation_id: str | None,
        identity: str | None,
        messages: tuple[ChatMessage, ...] | None,
        names: FieldNames,
        fit_to_budget: bool,
    ) -> Admitted:
        """Refusals first (each raises), then the task is built, queued and recorded."""
        dispatcher = self._dispatcher
        if self._models is not None:
            canonical = self._models.canonical(request.model_ref)
            if canonical != request.model_ref:
                request = request.model_copy(update={"model_ref": canonical})
        now = dispatcher.now()
        self._check_new(request, now)
        prompt = self._prompt_of(request)
        job = self._job_of(request, prompt, now, names)
        decision = self._place(request, job, now)
        lane = dispatcher.lanes[decision.pool_id]
        check_sampler_profile(request, lane.pool)
        if fit_to_budget:
            request = self._fit_to_budget(request, lane.pool, now)
        cost = task_tokens(request)
        limits, price = self._check_session(request, lane.pool, now, cost, names)
        bucket = self._check_rate(request, lane, now)
        predicted = self._check_predicted_start(request, lane)
        completion = request.workload is Workload.COMPLETION
        model = lane.pool.config.model
        task = Task(
            id=str(request.task_id),
            session_id=str(request.session_id),
            pool_id=lane.id,
            engine=request.engine,
            model=request.model_ref,
            priority=request.priority,
            request=generate_request(request, prompt, model, correlation_id, messages)
            if completion
            else None,
            work=None if completion else embed_request(request, model, correlation_id),
            workload=request.workload,
            encoding=request.encoding_format or "float",
            admitted_at=now,
            deadline_at=now + request.deadline_ms / 1000,
            expected_tokens=request.expected_tokens or cost,
            correlation_id=correlation_id,
            identity=identity,
            predicted_start_ms=predicted,
            job=job,
            decision=decision.log,
            price_per_token=price,
        )
        position = dispatcher.enqueue(task)
        if bucket is not None:
            bucket.take(now)
        self._reserve(task, limits, now, cost)
        self._record(task, request, position)
        budgets = dispatcher.budget_fields(task.session_id)
        # After the admit event and with position and prediction as admission saw them: the
        # task may start at once, but only in the queue's order.
        dispatcher.dispatch(task.pool_id)
        return Admitted(
            task_id=task.id,
            pool_id=task.pool_id,
            session_id=task.session_id,
            queue_position=position,
            predicted_start_ms=predicted,
            budgets=budgets,
            max_tokens=request.max_tokens,
        )

    def _check_new(self, request: TaskRequest, now: float) -> None:
        """A new task id, room to track it, and a deadline that can be met at all."""
        if self._dispatcher.stopping:
            raise ServerStopping(
                "the server is stopping and takes no new tasks",
                hint="send the task again once the server is back, or to another server",
            )
        tasks = self._dispatcher.tasks
        task_id = str(request.task_id)
        if task_id in tasks:
            raise Conflict(
                f"task_id {task_id} was already submitted; use a new UUID for a new task",
                hint="GET /v1/tasks/{id}/stream reads the existing task",
            )
        if not tasks.has_room(now):
            raise AdmissionRejected(
                "the server tracks too many tasks right now; retry shortly",
                retry_after_ms=1000,
                policy_label="server-capacity",
            )
        if request.deadline_ms <= 0:
            raise DeadlineUnmet(
                f"deadline_ms must be positive, got {request.deadline_ms}; it counts "
                "milliseconds from admission"
            )

    def _check_predicted_start(self, request: TaskRequest, lane: PoolLane) -> int:
        """The predicted start in ms, refused when it already misses the deadline."""
        _, predicted = self._dispatcher.predict_new(lane, request.priority)
        if predicted > request.deadline_ms:
            raise DeadlineUnmet(
                f"predicted start in {predicted} ms misses deadline_ms {request.deadline_ms}; "
                "allow more time or retry when the queue is shorter",
                retry_after_ms=predicted - request.deadline_ms,
                pool_id=lane.id,
                engine=request.engine.value,
            )
        return predicted

    def _reserve(self, task: Task, limits: BudgetLimits, now: float, max_tokens: int) -> None:
        """One more turn of the session, and its budget held for the task's max_tokens."""
        sessions = self._dispatcher.sessions
        session = sessions.get_or_create(task.session_id, now)
        sessions.hold(session, now, limits)
        session.usage.reserve(max_tokens, task.price_per_token)
        task.reserved_tokens = max_tokens
        task.session = session

    def _record(self, task: Task, request: TaskRequest, position: int) -> None:
        pool = self._dispatcher.lanes[task.pool_id].pool
        engine = task.engine.value
        self._metrics.enqueued(
            engine, pool.engine_version or "unknown", task.pool_id, task.priority.value
        ).inc()
        assert task.decision is not None
        narrate(
            "admission",
            "admit",
            task.pool_id,
            f"Admits task {task.id[:8]} to {task.pool_id} at position {position}, "
            f"start in ~{task.predicted_start_ms} ms.",
            task_id=task.id,
            job_id=task.id,
            session_id=task.session_id,
            pool_id=task.pool_id,
            engine=engine,
            correlation_id=task.correlation_id,
            identity=task.identity,
            queue_position=position,
            predicted_start_ms=task.predicted_start_ms,
            priority=task.priority.value,
            ctx=request.ctx,
            model_id=request.model_ref,
            **task.decision.fields(),
        )

    def _fit_to_budget(self, request: TaskRequest, pool: PoolRuntime, now: float) -> TaskRequest:
        """``max_tokens`` cut to what the session's budget on ``pool`` affords; a budget with
        nothing left is ``_check_session``'s to refuse."""
        limits = budget_limits(self._config.budgets, pool.config.budgets)
        session = self._dispatcher.sessions.get(str(request.session_id), now)
        usage = session.usage if session is not None else BudgetUsage()
        most = affordable_tokens(limits, usage, limits.cost_per_token)
        if not most or most >= request.max_tokens:
            return request
        return request.model_copy(update={"max_tokens": most})

    def _check_session(
        self, request: TaskRequest, pool: PoolRuntime, now: float, cost: int, names: FieldNames
    ) -> tuple[BudgetLimits, float]:
        """Turns and budgets of the task's session (OC-CORE-1023, SPEC §17.11).

        Returns the pool's limits, which govern the task whatever pool the session used
        before (what it spent there still counts), and the pool's price.
        """
        sessions = self._dispatcher.sessions
        session_id = str(request.session_id)
        session = sessions.get(session_id, now)
        limits = budget_limits(self._config.budgets, pool.config.budgets)
        price = limits.cost_per_token
        if session is not None and session.turns >= sessions.max_turns:
            refusal: str | None = (
                f"session {session_id} used all {session.turns} turns; start a new "
                f"{names.session} or wait for this one to expire"
            )
        else:
            usage = session.usage if session is not None else BudgetUsage()
            sized_by = None
            if request.workload is not Workload.COMPLETION:
                sized_by = names.inputs
                if request.query is not None:
                    sized_by = f"{names.query} and {names.inputs}"
            refusal = check_budget(
                limits, usage, max_tokens=cost, price=price, names=names, sized_by=sized_by
            )
        if refusal is not None:
            ttl_ms = (
                sessions.ttl_remaining_ms(session, now)
                if session is not None
                else int(sessions.ttl_s * 1000)
            )
            raise AdmissionRejected(
                refusal,
                retriable=False,
                retry_after_ms=ttl_ms,
                policy_label="session-budget",
                pool_id=pool.id,
                engine=request.engine.value,
            )
        return limits, price

    def _check_rate(self, request: TaskRequest, lane: PoolLane, now: float) -> TokenBucket | None:
        """The class throttle of the pool (ORCH-3006); the token is spent only on enqueue."""
        bucket = lane.rate_limits.get(request.priority)
        if bucket is None:
            return None
        wait_ms = math.ceil(bucket.wait_s(now) * 1000)
        if wait_ms > 0:
            rate = pool_rate(lane.pool.config, request.priority)
            raise AdmissionRejected(
                f"pool {lane.id} admits at most {rate} {request.priority.value} tasks per "
                f"second; retry in {wait_ms} ms",
                retry_after_ms=wait_ms,
                policy_label="rate-limit",
                pool_id=lane.id,
                engine=request.engine.value,
            )
        return bucket

    def _prompt_of(self, request: TaskRequest) -> str:
        refuse_unbuilt_fields(request)
        if request.workload is not Workload.COMPLETION:
            check_inputs(request, self._config.server.max_prompt_bytes)
            return ""
        refuse_fields(
            request,
            ("inputs", "query", "encoding_format", "dimensions"),
            "workload completion; send the text in prompt",
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

    def _overrides_of(self, request: TaskRequest) -> PlacementOverrides:
        wire = request.placement
        if wire is None:
            return AUTO
        overrides = PlacementOverrides(
            mode=wire.mode,
            pin_pool_id=wire.pin_pool_id,
            prefer_pools=tuple(wire.prefer_pools or ()),
            avoid_pools=tuple(wire.avoid_pools or ()),
            require_device_mask=tuple(wire.require_device_mask)
            if wire.require_device_mask is not None
            else None,
            allow_fallback=wire.allow_fallback,
        )
        if overrides.is_auto:
            return AUTO
        if not self._config.server.allow_placement_overrides:
            raise InvalidParams(
                "placement overrides are disabled on this server "
                "(server.allow_placement_overrides: false); send placement mode auto or none",
                engine=request.engine.value,
            )
        violation = check_overrides(
            mode=overrides.mode.value,
            pin_pool_id=overrides.pin_pool_id,
            prefer_pools=overrides.prefer_pools,
            avoid_pools=overrides.avoid_pools,
            known_pools=frozenset(self._pools.pools),
        )
        if violation is not None:
            raise InvalidParams(
                f"{violation.field}: {violation.message}", engine=request.engine.value
            )
        return overrides

    def _job_of(self, request: TaskRequest, prompt: str, now: float, names: FieldNames) -> JobSpec:
        """Guardrails on the request, then the job ``decide`` places (OC-CTRL-2010)."""
        overrides = self._overrides_of(request)
        matching = [
            p
            for p in self._pools.pools.values()
            if p.config.engine is request.engine and p.config.model == request.model_ref
        ]
        if not matching:
            reloading = self._pools.lifecycle.reloading_to(request.engine, request.model_ref)
            if reloading is not None:
                raise PoolUnready(
                    f"pool {reloading} is reloading to {request.model_ref!r} and serves it once "
                    "its new replicas are Ready; retry shortly",
                    retry_after_ms=RELOAD_RETRY_AFTER_MS,
                    pool_id=reloading,
                    engine=request.engine.value,
                )
            served = sorted(
                {f"{p.config.engine.value}:{p.config.model}" for p in self._pools.pools.values()}
            )
            raise PoolUnavailable(
                f"no pool serves engine {request.engine.value} with model "
                f"{request.model_ref!r}; served: {', '.join(served)}",
                engine=request.engine.value,
                retriable=False,
            )
        check_workload(request, matching)
        # ModelRequirements per pool (SPEC §17.8); the task must fit at least one of them.
        requirements = [model_requirements(p) for p in matching]
        violation = (
            check_context(
                ctx=request.ctx,
                model_ctx_max=max(r.ctx_max for r in requirements),
                prompt_tokens=estimate_prompt_tokens(len(prompt.encode())),
                max_tokens=request.max_tokens,
            )
            if request.workload is Workload.COMPLETION
            else longest_input(request, requirements, names)
        )
        if violation is not None:
            raise InvalidParams(
                f"{violation.field}: {violation.message}", engine=request.engine.value
            )
        return JobSpec(
            priority=request.priority,
            engine=request.engine,
            model_id=request.model_ref,
            required_ctx=request.ctx,
            expected_tokens=request.expected_tokens,
            placement=overrides,
            session_id=str(request.session_id),
            affinity=self._dispatcher.sessions.affinity(str(request.session_id), now),
            workload=request.workload,
        )

    def _place(self, request: TaskRequest, job: JobSpec, now: float) -> Assigned:
        """Pick the pool through core ``decide``; NoCapacity becomes a typed 503."""
        dispatcher = self._dispatcher
        decision = dispatcher.decide(dispatcher.placement_input(job, now))
        if isinstance(decision, Assigned):
            return decision
        engine = request.engine.value
        pools = self._pools.pools
        pinned = job.placement.pin_pool_id if job.placement.mode is PlacementMode.PIN else None
        candidates = (
            [pools[pinned]]
            if pinned in pools
            else [
                p
                for p in pools.values()
                if p.config.engine is request.engine and p.config.model == request.model_ref
            ]
        )
        errors = [p.last_error for p in candidates if p.last_error]
        detail = f" ({errors[0]})" if errors else ""
        filters = ", ".join(decision.log.filters_applied)
        draining = [p.id for p in candidates if p.draining]
        if candidates and len(draining) == len(candidates):
            # The pool exists but is not Ready while it drains (SPEC §6.4): POOL_UNREADY, so
            # clients retry; POOL_UNAVAILABLE is for tasks a drain ends in the queue.
            raise PoolUnready(
                f"pool {draining[0]} for {request.model_ref!r} is draining and takes no new "
                "tasks until it is reloaded; retry later or on another pool",
                retry_after_ms=5000,
                pool_id=draining[0],
                engine=engine,
            )
        if decision.unready:
            pool_id = candidates[0].id if candidates else None
            raise PoolUnready(
                f"pool {pool_id} for {request.model_ref!r} is not Ready yet{detail}; "
                f"retry shortly [{decision.reason.value}: {filters}]",
                retry_after_ms=2000,
                pool_id=pool_id,
                engine=engine,
            )
        raise PoolUnavailable(
            f"no pool can take this task: {decision.reason.value}{detail} [{filters}]",
            retry_after_ms=2000,
            pool_id=pinned,
            engine=engine,
        )


def generate_request(
    request: TaskRequest,
    prompt: str,
    model: str,
    correlation_id: str | None,
    messages: tuple[ChatMessage, ...] | None = None,
) -> GenerateRequest:
    """What the engine is asked: the validated request in the adapter's terms."""
    sampling = request.sampling
    return GenerateRequest(
        task_id=str(request.task_id),
        prompt=prompt,
        max_tokens=request.max_tokens,
        model=model,
        seed=request.seed,
        temperature=sampling.temperature if sampling else None,
        top_p=sampling.top_p if sampling else None,
        top_k=sampling.top_k if sampling else None,
        repeat_penalty=sampling.repeat_penalty if sampling else None,
        stop=tuple(sampling.stop or ()) if sampling else (),
        determinism=request.determinism,
        session_id=str(request.session_id),
        correlation_id=correlation_id,
        messages=messages,
    )


def embed_request(request: TaskRequest, model: str, correlation_id: str | None) -> EmbedRequest:
    """The whole input of an embedding or rerank task; the runner sends it in batches."""
    return EmbedRequest(
        task_id=str(request.task_id),
        model=model,
        workload=request.workload,
        texts=tuple(request.inputs or ()),
        query=request.query,
        dimensions=request.dimensions,
        correlation_id=correlation_id,
    )


def task_tokens(request: TaskRequest) -> int:
    """What the task is sized and budgeted by: output tokens of a completion, input tokens
    (estimated) of an embedding or rerank task."""
    if request.workload is Workload.COMPLETION:
        return request.max_tokens
    query = estimate_tokens(request.query) if request.query is not None else 0
    return max(1, sum(estimate_tokens(text) for text in request.inputs or ()) + query)


def refuse_fields(request: TaskRequest, names: tuple[str, ...], why: str) -> None:
    """Fields another workload uses are refused, never ignored."""
    present = [name for name in names if getattr(request, name) is not None]
    if present:
        raise InvalidParams(
            f"{', '.join(present)} {'is' if len(present) == 1 else 'are'} not used by {why}",
            engine=request.engine.value,
        )


def check_inputs(request: TaskRequest, max_bytes: int) -> None:
    """An embedding task needs ``inputs``; a rerank task ``query`` and ``inputs`` (documents).
    Every text is non-empty and all of them together fit the prompt limit."""
    workload = request.workload.value
    engine = request.engine.value
    if request.workload is Workload.EMBEDDING:
        refuse_fields(request, ("prompt", "query"), "workload embedding; send the texts in inputs")
    else:
        refuse_fields(
            request,
            ("prompt", "encoding_format", "dimensions"),
            "workload rerank; send query and the documents in inputs",
        )
        if not request.query:
            raise InvalidParams("workload rerank needs a non-empty query", engine=engine)
    if not request.inputs:
        raise InvalidParams(
            f"workload {workload} needs inputs: a non-empty list of texts", engine=engine
        )
    empty = next((i for i, text in enumerate(request.inputs) if not text), None)
    if empty is not None:
        raise InvalidParams(f"inputs[{empty}] is empty; every input must hold text", engine=engine)
    size = sum(len(text.encode()) for text in request.inputs) + len((request.query or "").encode())
    if size > max_bytes:
        raise InvalidParams(
            f"inputs hold {size} bytes; this server accepts at most {max_bytes} bytes per task "
            "(split them over several tasks)",
            engine=engine,
        )


def check_workload(request: TaskRequest, pools: list[PoolRuntime]) -> None:
    """Some pool of the model must declare the workload (``supported_workloads``)."""
    if any(request.workload in p.config.supported_workloads for p in pools):
        return
    served = sorted({w.value for p in pools for w in p.config.supported_workloads})
    raise InvalidParams(
        f"model {request.model_ref!r} is served for {', '.join(served)} only, not "
        f"{request.workload.value}; use a pool that lists {request.workload.value} in "
        "supported_workloads (GET /v1/capabilities)",
        engine=request.engine.value,
        pool_id=pools[0].id,
    )


def longest_input(
    request: TaskRequest, requirements: list[ModelRequirements], names: FieldNames
) -> GuardViolation | None:
    """Each text (with the query, for rerank) must fit the model's context on its own; the
    refusal names the text as the client sent it (``input[3]``, ``documents[0]``, ``prompt``)."""
    limit = min(request.ctx, max(r.ctx_max for r in requirements))
    query = estimate_tokens(request.query) if request.query is not None else 0
    texts = request.inputs or ()
    for i, text in enumerate(texts):
        tokens = estimate_tokens(text) + query
        if tokens > limit:
            where = f"{names.inputs}[{i}]" if len(texts) > 1 else names.inputs
            return GuardViolation(
                names.inputs,
                f"{where} is about {tokens} tokens, over the context of {limit} tokens; "
                "shorten or split it",
            )
    return None


def refuse_unbuilt_fields(request: TaskRequest) -> None:
    """Fields the wire format has but nothing acts on yet are refused, never ignored."""
    engine = request.engine.value
    if request.kv_hint is not None:
        raise InvalidParams(
            "kv_hint is not available yet; KV reuse follows session_id on its own (omit it)",
            engine=engine,
        )


def check_sampler_profile(request: TaskRequest, pool: PoolRuntime) -> None:
    """A requested sampler profile version must be the one the chosen pool declares."""
    wanted = request.sampler_profile_version
    have = pool.config.sampler_profile_version
    if wanted is not None and wanted != have:
        served = f"declares {have!r}" if have else "declares no sampler profile version"
        raise InvalidParams(
            f"sampler_profile_version {wanted!r} does not match pool {pool.id}, which {served}; "
            "omit the field or ask for the pool's version (GET /v1/capabilities)",
            engine=request.engine.value,
            pool_id=pool.id,
        )


def model_requirements(pool: PoolRuntime) -> ModelRequirements:
    """What the pool's model needs, from config and what the engine reported (D-CORE-05).

    ``ctx_max`` is the smaller of the configured ctx and the engine's limit; fields nobody can
    observe yet (digest, extensions) stay empty rather than guessed.
    """
    return ModelRequirements(
        model_id=pool.config.model,
        ctx_max=pool.ctx_max,
        quant=pool.config.quant,
        streaming=True,
    )


def pool_rate(cfg: PoolConfig, priority: Priority) -> int | None:
    return next((p.rate_limit_rps for p in cfg.admission.priorities if p.name is priority), None)


_COUNTED_REASONS = frozenset(
    {
        "ADMISSION_REJECT",
        "QUEUE_FULL_DROP_LRU",
        "INVALID_PARAMS",
        "POOL_UNREADY",
        "POOL_UNAVAILABLE",
    }
)
