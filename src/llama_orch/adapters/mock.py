"""MockEngine: simulation scaffolding behind the real adapter interface (ORCH-3058, D-MOCK-01..03).

It is not inference: it emits words drawn from a fixed vocabulary by a PRNG seeded from the
determinism key (prompt, seed, sampling parameters), at a configured pace, with fault injection.
Everything it reports is labelled ``simulated``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncGenerator, Iterator

from llama_orch.config import MockEngineConfig
from llama_orch.contracts.engine import (
    EmbedRequest,
    EmbedResult,
    EngineEvent,
    GenerateRequest,
    TokenSink,
    WorkerHealth,
    WorkerProps,
)
from llama_orch.core.embedding import estimate_tokens, hashed_vector, similarity_score
from llama_orch.errors import (
    DecodeTimeout,
    WorkerError,
    WorkerInternal,
    WorkerReset,
    WorkerUnavailable,
)
from llama_orch.vocab import Engine

_VOCAB = (
    "the",
    "a",
    "GPU",
    "queue",
    "token",
    "stream",
    "model",
    "pool",
    "replica",
    "slot",
    "fast",
    "quiet",
    "river",
    "stone",
    "light",
    "cloud",
    "warm",
    "north",
    "agent",
    "plan",
    "and",
    "of",
    "to",
    "in",
    "is",
    "runs",
    "waits",
    "sings",
    "moves",
    "holds",
    "bright",
    "slow",
    "deep",
)

#: Tokens produced back to back, at most, before the event loop gets a turn.
_YIELD_EVERY = 64

_FAULTS: dict[str, type[WorkerError]] = {
    "internal": WorkerInternal,
    "reset": WorkerReset,
    "unavailable": WorkerUnavailable,
    "timeout": DecodeTimeout,
}


def determinism_seed(request: GenerateRequest) -> int:
    key = "\x1f".join(
        str(part)
        for part in (
            request.prompt,
            request.seed,
            request.temperature,
            request.top_p,
            request.top_k,
            request.repeat_penalty,
            "\x1e".join(request.stop),
            request.model,
        )
    )
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def iter_mock_tokens(request: GenerateRequest) -> Iterator[str]:
    """The exact token texts a request produces, one at a time, before pacing and faults.

    Linear in ``max_tokens``: a stop sequence that was not in the text before this token can
    only end inside it, so only the text's last ``len(stop) - 1`` characters plus the token
    are searched.
    """
    rng = random.Random(determinism_seed(request))
    keep = max((len(stop) for stop in request.stop), default=1) - 1
    tail = ""
    for i in range(request.max_tokens):
        piece = rng.choice(_VOCAB)
        token = piece if i == 0 else " " + piece
        window = tail + token
        if any(stop in window for stop in request.stop):
            return
        tail = window[-keep:] if keep else ""
        yield token


def mock_tokens(request: GenerateRequest) -> list[str]:
    """All of ``iter_mock_tokens``."""
    return list(iter_mock_tokens(request))


class MockEngine:
    """One simulated replica."""

    def __init__(self, config: MockEngineConfig, *, slots: int, model: str) -> None:
        self._config = config
        self._slots = slots
        self._model = model
        self._active = 0
        #: Task ids whose stream was closed before it finished (for tests and the status page).
        self.canceled: list[str] = []

    @property
    def engine(self) -> Engine:
        return Engine.MOCK

    async def health(self) -> WorkerHealth:
        cfg = self._config
        return WorkerHealth(
            live=cfg.healthy, ready=cfg.healthy and cfg.ready, detail="simulated engine"
        )

    async def props(self) -> WorkerProps:
        return WorkerProps(
            slots_total=self._slots,
            slots_free=max(0, self._slots - self._active),
            ctx_max=self._config.ctx_max,
            model_id=self._model,
            perf_tokens_per_s=self._config.tokens_per_s,
            first_token_ms=float(self._config.ttft_ms),
            # Simulated: the share of slots busy stands in for the share of KV cache in use.
            kv_cache_usage_ratio=self._active / self._slots if self._slots else 0.0,
            simulated=True,
        )

    async def engine_version(self) -> str:
        return self._config.engine_version

    async def submit(
        self, request: GenerateRequest
    ) -> AsyncGenerator[EngineEvent, TokenSink | None]:
        """Yields its tokens as events (a ``TokenSink`` sent in is not used)."""
        cfg = self._config
        loop = asyncio.get_running_loop()
        tokens = iter_mock_tokens(request)
        self._active += 1
        finished = False
        try:
            yield EngineEvent(
                "started",
                data={
                    "engine_version": cfg.engine_version,
                    "simulated": True,
                    "tokens_in": max(1, len(request.prompt) // 4),
                },
            )
            start = loop.time()
            first_at = start + cfg.ttft_ms / 1000
            interval = 1.0 / cfg.tokens_per_s
            produced = 0
            for i, text in enumerate(tokens):
                if cfg.reset_at_token is not None and i >= cfg.reset_at_token:
                    raise WorkerReset(f"simulated engine reset the connection at token {i}")
                if cfg.fail_at_token is not None and i >= cfg.fail_at_token:
                    raise _FAULTS[cfg.fail_kind](f"simulated engine failure at token {i}")
                if cfg.hang_after_token is not None and i >= cfg.hang_after_token:
                    await asyncio.Event().wait()  # hangs until the watchdog or a cancel
                delay = first_at + i * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif i % _YIELD_EVERY == 0:
                    # A pace faster than the loop can serve never sleeps: let the loop run.
                    await asyncio.sleep(0)
                yield EngineEvent("tokens", (text,), i)
                produced = i + 1
            finished = True
            yield EngineEvent("end", data={"tokens_out": produced})
        finally:
            self._active -= 1
            if not finished:
                self.canceled.append(request.task_id)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """Simulated vectors (seeded by model and text) or scores, after ``embed_batch_ms``."""
        cfg = self._config
        self._active += 1
        try:
            if cfg.fail_at_token is not None:
                raise _FAULTS[cfg.fail_kind]("simulated engine failure on an embedding batch")
            if cfg.embed_batch_ms:
                await asyncio.sleep(cfg.embed_batch_ms / 1000)
            else:
                await asyncio.sleep(0)
        finally:
            self._active -= 1
        dims, model = cfg.embedding_dims, self._model
        tokens = sum(estimate_tokens(t) for t in request.texts)
        if request.query is None:
            vectors = tuple(hashed_vector(model, t, dims) for t in request.texts)
            return EmbedResult(vectors=vectors, tokens_in=tokens)
        query = hashed_vector(model, request.query, dims)
        scores = tuple(
            similarity_score(query, hashed_vector(model, text, dims)) for text in request.texts
        )
        return EmbedResult(scores=scores, tokens_in=tokens + estimate_tokens(request.query))

    async def cancel(self, task_id: str) -> None:
        # Closing the stream is the cancel; there is no engine-side state to clear.
        return None

    async def aclose(self) -> None:
        return None
