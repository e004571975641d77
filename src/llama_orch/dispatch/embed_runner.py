"""EmbedRunner: drives one embedding or rerank task, batch by batch (the non-token path).

The task's texts go to the engine in calls of at most the pool's ``embedding_batch`` texts, one
after another on the one slot the task holds, so a pool's slots count engine calls in flight,
never texts. Results are put back together in input order. A cancel (or any end) stops the
batches: the call in flight is closed with the runner, and no further batch is sent.

The watchdog is the token path's: ``timeouts.wall_ms`` bounds the whole task and
``timeouts.idle_ms`` each engine call; either one ending it fails the task with
``DECODE_TIMEOUT``. The slot is released however the run ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from llama_orch.adapters.host import AdapterHost
from llama_orch.contracts.engine import EmbedRequest, EmbedResult
from llama_orch.core.clock import Clock
from llama_orch.core.embedding import batches, encode_base64, shorten
from llama_orch.dispatch.endings import Endings
from llama_orch.dispatch.lanes import PoolLane
from llama_orch.dispatch.tasks import Task
from llama_orch.errors import DecodeTimeout, InvalidParams, WorkerError, WorkerInternal
from llama_orch.pool.manager import Replica
from llama_orch.vocab import Workload

Release = Callable[[Task, PoolLane, Replica], None]


class EmbedRunner:
    def __init__(
        self, *, host: AdapterHost, endings: Endings, clock: Clock, release: Release
    ) -> None:
        self._host = host
        self._endings = endings
        self._clock = clock
        self._release = release

    async def run(self, task: Task, lane: PoolLane, replica: Replica, work: EmbedRequest) -> None:
        timeouts = lane.pool.config.timeouts
        loop = asyncio.get_running_loop()
        wall_at = loop.time() + timeouts.wall_ms / 1000
        parts: list[EmbedResult] = []
        try:
            async with asyncio.timeout_at(wall_at):
                for part in batches(len(work.texts), lane.pool.config.embedding_batch):
                    if task.terminal:
                        return
                    batch = replace(work, texts=work.texts[part.start : part.stop])
                    async with asyncio.timeout(timeouts.idle_ms / 1000):
                        result = await self._host.embed(task.pool_id, replica.replica_id, batch)
                    if task.terminal:
                        return
                    task.batch_answered(self._clock.now())
                    refusal = _narrower(work, result) or _changed_size(task, parts, result)
                    if refusal is not None:
                        self._endings.fail(task, refusal)
                        return
                    parts.append(result)
            task.engine_started(sum(p.tokens_in for p in parts), None)
            task.result = assemble(work, parts, task.encoding)
            self._endings.done(task, replica)
        except WorkerError as exc:
            if not task.terminal:
                self._endings.fail(task, exc)
        except TimeoutError:
            if not task.terminal:
                wall = loop.time() >= wall_at
                limit = timeouts.wall_ms if wall else timeouts.idle_ms
                self._endings.fail(
                    task,
                    DecodeTimeout(
                        f"the engine exceeded the {'wall' if wall else 'idle'} timeout of "
                        f"{limit} ms on an embedding batch; its slot is freed",
                        engine=task.engine.value,
                        pool_id=task.pool_id,
                    ),
                )
        finally:
            self._release(task, lane, replica)


def _narrower(work: EmbedRequest, result: EmbedResult) -> InvalidParams | None:
    """``dimensions`` above the model's own: refused, as OpenAI does, rather than answered
    with shorter vectors than asked for."""
    wanted = work.dimensions
    if wanted is None or not result.vectors or len(result.vectors[0]) >= wanted:
        return None
    size = len(result.vectors[0])
    return InvalidParams(
        f"dimensions is {wanted}, but this model's embeddings have {size}; ask for at most "
        f"{size}, or leave dimensions out"
    )


def _changed_size(
    task: Task, parts: list[EmbedResult], result: EmbedResult
) -> WorkerInternal | None:
    """Each answer is checked on its own; one task's vectors must also agree across batches
    (an engine swapped to another model mid-task would otherwise mix two sizes)."""
    if not parts or not parts[0].vectors or not result.vectors:
        return None
    before, now = len(parts[0].vectors[0]), len(result.vectors[0])
    if before == now:
        return None
    return WorkerInternal(
        f"{task.engine.value}: the engine answered embeddings of {before} values, then of "
        f"{now} in a later batch of the same task; the task is failed rather than mixing them",
        engine=task.engine.value,
        pool_id=task.pool_id,
    )


def assemble(work: EmbedRequest, parts: list[EmbedResult], encoding: str) -> dict[str, Any]:
    """``end.result``: vectors in input order (floats or base64), or rerank results sorted by
    score, highest first (ties keep input order)."""
    if work.workload is Workload.RERANK:
        scores = [s for part in parts for s in part.scores]
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
        return {"results": [{"index": i, "score": scores[i]} for i in ranked]}
    vectors = [shorten(v, work.dimensions) for part in parts for v in part.vectors]
    embeddings: list[Any] = (
        [encode_base64(v) for v in vectors]
        if encoding == "base64"
        else [v if type(v) is list else list(v) for v in vectors]
    )
    return {
        "encoding_format": encoding,
        "dimensions": len(vectors[0]) if vectors else 0,
        "embeddings": embeddings,
    }
