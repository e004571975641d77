"""The front doors' one port into the task system.

Everything the OpenAI and Ollama front doors ask of llama-orch goes through here: which models
are served, admitting a request (the same admission, guardrails, budgets, sessions, queues,
placement and watchdog as ``POST /v1/tasks``), following a task's transcript in the same
response, and canceling it. The front doors themselves only parse and translate.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from llama_orch.contracts.api import Sampling, TaskRequest
from llama_orch.contracts.engine import ChatMessage
from llama_orch.core.budgets import FieldNames
from llama_orch.core.guardrails import estimate_prompt_tokens
from llama_orch.dispatch.service import SERVER_STOPS, TaskState
from llama_orch.dispatch.streams import TaskStream
from llama_orch.errors import ErrorKind, InvalidParams
from llama_orch.server.data_plane import budget_headers
from llama_orch.server.deps import AppDeps
from llama_orch.server.frontdoor._chat import render_chat
from llama_orch.server.pushing import TranscriptPusher
from llama_orch.vocab import Engine, Priority, Workload


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model as the front doors list it: one pool's model."""

    name: str
    pool_id: str
    engine: Engine
    ctx: int
    ready: bool
    simulated: bool
    chat_template: str | None
    eos_token: str = ""


def served_models(deps: AppDeps) -> list[ServedModel]:
    models = []
    for pool in deps.pools.pools.values():
        template, eos = None, ""
        for snapshot in deps.host.pool_capabilities(pool.id).values():
            found = snapshot.props.features.get("chat_template")
            if isinstance(found, str) and found:
                template = found
                eos = str(snapshot.props.features.get("eos_token") or "")
                break
        models.append(
            ServedModel(
                name=pool.config.model,
                pool_id=pool.id,
                engine=pool.config.engine,
                ctx=pool.ctx_max,
                ready=pool.ready,
                simulated=pool.simulated,
                chat_template=template,
                eos_token=eos,
            )
        )
    return models


def listed_models(deps: AppDeps) -> list[ServedModel]:
    """One entry per model name, ready when any pool serving it is (admission picks among
    them)."""
    by_name: dict[str, ServedModel] = {}
    for model in served_models(deps):
        seen = by_name.get(model.name)
        if seen is None:
            by_name[model.name] = model
        elif model.ready and not seen.ready:
            by_name[model.name] = dataclasses.replace(seen, ready=True)
    return list(by_name.values())


def find_model(deps: AppDeps, name: str) -> ServedModel | None:
    """The served model called ``name``: a pool's model or a pool id; ``:latest`` is implied."""
    models = served_models(deps)
    for candidate in (name, name.removesuffix(":latest")):
        for model in models:
            if candidate == model.name:
                return model
        for model in models:
            if candidate == model.pool_id:
                return model
    return None


class PromptTooLong(InvalidParams):
    """A front-door prompt, or prompt and length, past its model's context; ``param`` names
    the field to change."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


#: The header that names a front-door request's session, as refusals name it.
SESSION_HEADER = "X-Session-Id"


@dataclass(frozen=True, slots=True)
class Submission:
    """A request translated from a peer API; every field already validated."""

    model: ServedModel
    prompt: str | None
    messages: tuple[ChatMessage, ...] | None
    max_tokens: int | None
    priority: Priority
    session_id: uuid.UUID
    deadline_ms: int
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    stop: tuple[str, ...] = ()
    #: The request field that set ``max_tokens``, as a refusal names it to the client.
    length_field: str = "max_tokens"
    #: ``max_tokens`` is a most (Ollama's ``num_predict``), cut to what the context and the
    #: session's budget leave, not a length to refuse when it does not fit (OpenAI's).
    at_most: bool = False


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request: what the response headers and the stream need."""

    task_id: str
    pool_id: str
    session_id: str
    #: The task's transcript, followed in the same response.
    stream: TaskStream
    queue_position: int
    predicted_start_ms: int
    max_tokens: int
    budget_headers: dict[str, str]


def prompt_of(submission: Submission, max_bytes: int | None = None) -> str:
    if submission.messages is not None:
        # bos_token stays empty: llama-server adds BOS itself when it tokenizes the prompt.
        model = submission.model
        return render_chat(
            submission.messages,
            model.chat_template,
            eos_token=model.eos_token,
            max_bytes=max_bytes,
        )
    return submission.prompt or ""


def admit(
    deps: AppDeps,
    submission: Submission,
    *,
    default_max_tokens: int,
    correlation_id: str | None,
    identity: str | None,
) -> Ticket:
    """Admit through the task API's admission; raises its typed errors unchanged."""
    model = submission.model
    prompt = prompt_of(submission, deps.config.server.max_prompt_bytes)
    # Admission's estimate: a prompt that leaves no room for one token fits no max_tokens.
    room = model.ctx - estimate_prompt_tokens(len(prompt.encode()))
    if room < 1:
        raise PromptTooLong(
            f"the prompt is about {model.ctx - room} tokens, which leaves no room in the "
            f"model's context of {model.ctx} tokens for an answer; shorten it (a chat: send "
            "fewer or shorter messages)",
            param="messages" if submission.messages is not None else "prompt",
        )
    max_tokens = submission.max_tokens
    if max_tokens is None:
        # Leave the prompt room within ctx; admission's own guardrail still has the last word.
        max_tokens = max(1, min(default_max_tokens, room))
    elif max_tokens > room and submission.at_most:
        max_tokens = room
    elif max_tokens > room:
        field = submission.length_field
        raise PromptTooLong(
            f"{field} {max_tokens} and the prompt (about {model.ctx - room} tokens) do not fit "
            f"the model's context of {model.ctx} tokens; send {field} {room} or less",
            param=field,
        )
    sampling = None
    knobs = (submission.temperature, submission.top_p, submission.top_k, submission.repeat_penalty)
    if any(v is not None for v in knobs) or submission.stop:
        sampling = Sampling(
            temperature=submission.temperature,
            top_p=submission.top_p,
            top_k=submission.top_k,
            repeat_penalty=submission.repeat_penalty,
            stop=list(submission.stop) or None,
        )
    request = TaskRequest(
        task_id=uuid.uuid4(),
        session_id=submission.session_id,
        workload=Workload.COMPLETION,
        model_ref=model.name,
        engine=model.engine,
        ctx=model.ctx,
        priority=submission.priority,
        max_tokens=max_tokens,
        deadline_ms=submission.deadline_ms,
        seed=submission.seed,
        prompt=prompt,
        sampling=sampling,
    )
    service = deps.service
    admitted = service.admit(
        request,
        correlation_id=correlation_id,
        identity=identity,
        messages=submission.messages,
        names=FieldNames(length=submission.length_field, session=SESSION_HEADER),
        # Nor more than the session's budget admits on the pool the task lands on: the client
        # asked for no length, or for a most, so the answer stops at the budget
        # (finish_reason "length") rather than being refused.
        fit_to_budget=submission.max_tokens is None or submission.at_most,
    )
    return Ticket(
        task_id=admitted.task_id,
        pool_id=admitted.pool_id,
        session_id=admitted.session_id,
        stream=service.follow(admitted.task_id),
        queue_position=admitted.queue_position,
        predicted_start_ms=admitted.predicted_start_ms,
        max_tokens=admitted.max_tokens,
        budget_headers=budget_headers(admitted.budgets),
    )


@dataclass(frozen=True, slots=True)
class EmbedSubmission:
    """An embedding (``query`` None) or rerank request translated from a peer API."""

    model: ServedModel
    inputs: list[str]
    priority: Priority
    session_id: uuid.UUID
    deadline_ms: int
    query: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    #: The request field the texts came in (``input``, ``prompt``, ``documents``), for refusals.
    inputs_field: str = "input"


def admit_embed(
    deps: AppDeps,
    submission: EmbedSubmission,
    *,
    correlation_id: str | None,
    identity: str | None,
) -> Ticket:
    """Admit an embedding or rerank request through the task API's admission."""
    model = submission.model
    rerank = submission.query is not None
    request = TaskRequest(
        task_id=uuid.uuid4(),
        session_id=submission.session_id,
        workload=Workload.RERANK if rerank else Workload.EMBEDDING,
        model_ref=model.name,
        engine=model.engine,
        ctx=model.ctx,
        priority=submission.priority,
        max_tokens=1,
        deadline_ms=submission.deadline_ms,
        inputs=submission.inputs,
        query=submission.query,
        encoding_format=None if rerank else submission.encoding_format,
        dimensions=submission.dimensions,
    )
    service = deps.service
    admitted = service.admit(
        request,
        correlation_id=correlation_id,
        identity=identity,
        names=FieldNames(session=SESSION_HEADER, inputs=submission.inputs_field),
    )
    return Ticket(
        task_id=admitted.task_id,
        pool_id=admitted.pool_id,
        session_id=admitted.session_id,
        stream=service.follow(admitted.task_id),
        queue_position=admitted.queue_position,
        predicted_start_ms=admitted.predicted_start_ms,
        max_tokens=1,
        budget_headers=budget_headers(admitted.budgets),
    )


async def outcome(deps: AppDeps, ticket: Ticket) -> Finished | Failed:
    """Wait for the task's end (tokens, if any, are skipped)."""
    async for event in follow(deps, ticket):
        if isinstance(event, Finished | Failed):
            return event
    raise AssertionError("a task transcript always ends with a terminal frame")


@dataclass(frozen=True, slots=True)
class Waiting:
    """Still queued, at this position."""

    position: int


@dataclass(frozen=True, slots=True)
class Finished:
    tokens_in: int
    tokens_out: int
    canceled: bool
    #: ``length`` when the task used all of its ``max_tokens``, else ``stop``.
    finish_reason: str
    #: An embedding or rerank task's ``end.result``.
    result: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    kind: ErrorKind
    message: str
    retry_after_ms: int | None


Event = list[str] | Waiting | Finished | Failed


class Place:
    """Where a reader is in a task's transcript; shared with what pushes on its behalf."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index = 0


async def follow(
    deps: AppDeps,
    ticket: Ticket,
    *,
    waiting_every_s: float | None = None,
    pusher: TranscriptPusher | None = None,
    place: Place | None = None,
) -> AsyncIterator[Event]:
    """The task's tokens in batches (one per transcript read), then one terminal event.

    With ``waiting_every_s``, a ``Waiting`` comes after each such silence while queued. With
    an attached ``pusher`` (whose ``render`` advances ``place``), tokens published while the
    reader is caught up are pushed instead; an empty batch then hands the writer its turn.
    """
    stream = ticket.stream
    entries = stream.entries
    place = place or Place()
    while True:
        index = place.index
        if index >= len(entries):
            # Nothing enters the transcript while the task is queued: once something has, waits
            # need no timer (which would otherwise be armed and canceled for every token).
            every = waiting_every_s if index == 0 else None
            if pusher is not None and pusher.pushing:
                caught_up = await pusher.park(every)
                if caught_up and place.index >= len(entries) and not stream.closed:
                    yield []
            else:
                caught_up = await stream.wait(index, every)
            if not caught_up:
                status = deps.service.task_status(ticket.task_id)
                if status.state is TaskState.QUEUED:
                    yield Waiting(status.queue_position)
            continue
        end = len(entries)
        texts: list[str] = []
        while index < end:
            entry = entries[index]
            index += 1
            if type(entry) is str:
                texts.append(entry)
                continue
            last = _terminal(entry, ticket, deps)  # type: ignore[arg-type]
            if last is not None:
                if texts:
                    yield texts
                yield last
                return
        place.index = index
        if texts:
            yield texts


#: A front-door request's start deadline when it sends no ``X-Deadline-Ms``.
DEFAULT_DEADLINE_MS = 600_000


def for_peer(kind: ErrorKind, message: str) -> str:
    """A task error's message for a front-door caller, who never set a task field: a deadline
    error says where its ``deadline_ms`` came from."""
    if kind is ErrorKind.DEADLINE_UNMET:
        return (
            f"{message} (deadline_ms is the X-Deadline-Ms request header, "
            f"{DEFAULT_DEADLINE_MS} when it is absent)"
        )
    return message


def stopped_by_server(cancel_reason: str | None) -> Failed | None:
    """A task the server stopped (dispatch's ``SERVER_STOPS``: a drain's deadline, a shutdown)
    fails retriably at the front doors: their clients read a cancel as final, and this one was
    not theirs. None for a cancel that was the caller's."""
    why = SERVER_STOPS.get(cancel_reason or "")
    if why is None:
        return None
    return Failed(
        kind=ErrorKind.POOL_UNAVAILABLE,
        message=f"the task was stopped because {why}; retry the request",
        retry_after_ms=1000,
    )


def _terminal(frame: tuple[str, bytes], ticket: Ticket, deps: AppDeps) -> Finished | Failed | None:
    """The event a terminal frame ends a ``follow`` with; None for any other frame."""
    event, data = frame
    if event == "end":
        payload = orjson.loads(data)
        tokens_out = int(payload.get("tokens_out", 0))
        canceled = bool(payload.get("canceled", False))
        stopped = canceled and stopped_by_server(
            deps.service.task_status(ticket.task_id).cancel_reason
        )
        return stopped or Finished(
            tokens_in=int(payload.get("tokens_in", 0)),
            tokens_out=tokens_out,
            canceled=canceled,
            finish_reason="length" if tokens_out >= ticket.max_tokens else "stop",
            result=payload.get("result"),
        )
    if event == "error":
        payload = orjson.loads(data)
        kind = ErrorKind(payload.get("code", ErrorKind.INTERNAL.value))
        return Failed(
            kind=kind,
            message=for_peer(kind, str(payload.get("message", ""))),
            retry_after_ms=payload.get("retry_after_ms"),
        )
    return None


def cancel(deps: AppDeps, ticket: Ticket, *, reason: str) -> None:
    """Cancel the task (idempotent); a running one has its engine request closed."""
    if not ticket.stream.closed:
        deps.service.cancel(ticket.task_id, reason=reason)


def queue_position(deps: AppDeps, ticket: Ticket) -> int:
    return deps.service.task_status(ticket.task_id).queue_position
