"""The adapter interface every engine implements (SPEC §7.1, ADAPT-3000).

An adapter speaks one engine's native API. It never spawns processes or stages models.

Streaming contract of ``submit`` (an async generator):
- it yields ``EngineEvent`` of kind ``started`` once, then ``tokens`` events, then ``end`` once;
- a ``tokens`` event carries consecutive tokens (``texts``, the first one at ``index``): the
  tokens of one upstream read, or a batch of one, so the relay pays per read rather than per
  token; indices run 0, 1, 2, ... across events with no gap;
- it reports a failure by raising a ``llama_orch.errors.WorkerError`` subclass, or by yielding a
  final ``error`` event carrying one (the host treats both the same);
- cancellation is closing the iterator (``aclose`` / task cancellation): the adapter must then
  close its upstream request promptly. ``cancel(task_id)`` is the best-effort extra for engines
  with a cancel endpoint of their own.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from llama_orch.errors import WorkerError
from llama_orch.vocab import DeterminismLevel, Engine, Workload

EventKind = Literal["started", "tokens", "end", "error"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat turn, as the OpenAI and Ollama front doors received it (text only)."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """What the dispatcher asks an engine to do, already validated and normalized."""

    task_id: str
    prompt: str
    max_tokens: int
    model: str
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    stop: tuple[str, ...] = ()
    determinism: DeterminismLevel | None = None
    session_id: str | None = None
    correlation_id: str | None = None
    #: The chat turns behind ``prompt``, when the task came in as a chat. Adapters whose engine
    #: serves a chat route send these and let the engine apply the model's template; the others
    #: send ``prompt``, which the front door rendered with that template.
    messages: tuple[ChatMessage, ...] | None = None


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """One engine-sized batch of an embedding or rerank task.

    ``texts`` are the inputs to embed, or the documents to score against ``query`` (rerank).
    Results come back in the order of ``texts``.
    """

    task_id: str
    model: str
    workload: Workload
    texts: tuple[str, ...]
    query: str | None = None
    #: Shorten vectors to this many dimensions, where the engine supports it.
    dimensions: int | None = None
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """An engine's answer to one ``EmbedRequest``, in the order of its ``texts``.

    Embedding fills ``vectors`` (one per text); rerank fills ``scores`` (one per document, by
    position, unsorted).
    """

    vectors: Sequence[Sequence[float]] = ()
    scores: Sequence[float] = ()
    tokens_in: int = 0


class EngineEvent(NamedTuple):
    """One event of a ``submit`` stream; immutable.

    A named tuple rather than a frozen dataclass: one is built per token, and a frozen
    dataclass's ``__init__`` costs several times as much on that hot path.
    """

    kind: EventKind
    #: A ``tokens`` event's texts, in order; the first has index ``index``.
    texts: Sequence[str] = ()
    #: Shadows ``tuple.index`` on purpose: the field name is the contract.
    index: int = 0  # type: ignore[assignment]
    data: Mapping[str, Any] = _EMPTY
    error: WorkerError | None = None


#: What a stream's consumer may send into a ``submit`` stream right after its ``started`` event:
#: called with each upstream read's token texts and the first one's index, in order, it returns
#: False once it wants no more (its task ended). An adapter that takes it hands tokens over
#: through it, from its connection's own callback, instead of yielding ``tokens`` events (one
#: task step less per token); one that ignores it yields them as always.
TokenSink = Callable[[list[str], int], bool]

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    """``live``: the engine answers; ``ready``: it can take a submission now.

    ``breaker`` is filled in by the adapter host (the replica's circuit breaker), not by adapters.
    """

    live: bool
    ready: bool
    detail: str | None = None
    breaker: BreakerState | None = None


@dataclass(frozen=True, slots=True)
class WorkerProps:
    """Capacity and capabilities an engine reports; ``None`` means it cannot be observed."""

    slots_total: int | None = None
    slots_free: int | None = None
    ctx_max: int | None = None
    features: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    model_id: str | None = None
    model_digest: str | None = None
    sampler_profile_version: str | None = None
    perf_tokens_per_s: float | None = None
    first_token_ms: float | None = None
    #: Share of the KV cache in use, 0..1, where the engine reports it (``kv_cache_usage_ratio``).
    kv_cache_usage_ratio: float | None = None
    #: The model names the engine says it serves, where it lists them (``GET /v1/models``);
    #: None when it cannot say. A list without the pool's model fails the model gate.
    served_models: tuple[str, ...] | None = None
    simulated: bool = False


@runtime_checkable
class EngineAdapter(Protocol):
    """One engine behind the common interface."""

    @property
    def engine(self) -> Engine: ...

    async def health(self) -> WorkerHealth: ...

    async def props(self) -> WorkerProps: ...

    async def engine_version(self) -> str: ...

    def submit(self, request: GenerateRequest) -> AsyncGenerator[EngineEvent, TokenSink | None]: ...

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """Embed or score one batch (not streamed, never retried); an engine or a pool that
        serves no such workload raises ``WorkerInvalidParams``."""
        ...

    async def cancel(self, task_id: str) -> None: ...

    async def aclose(self) -> None: ...
