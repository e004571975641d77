"""Priorities prove themselves: a flood of batch embedding work does not hold up interactive
chat, whether the chat runs on its own pool on the same GPU or on the very pool that embeds.
Assertions are on queue positions, predictions and start order, never on wall-clock time."""

from __future__ import annotations

from typing import Any

from tests.e2e.test_embeddings import embed_body
from tests.e2e.test_engines import wait_until
from tests.support.server import RunningServer, config_of, mock_pool, running_server, task_body

FLOOD = 24
#: Slow enough that the flood is still queued when the chat arrives.
SLOW_BATCH = {"embed_batch_ms": 200}


async def flood(srv: RunningServer, model: str) -> list[dict[str, Any]]:
    admitted = []
    for i in range(FLOOD):
        body = embed_body([f"bulk {i} {j}" for j in range(8)], model=model, priority="batch")
        answer = await srv.submit(body)
        assert 202 == answer.status_code, answer.text
        admitted.append({"task_id": body["task_id"], **answer.json()})
    return admitted


async def test_chat_on_a_pool_sharing_the_gpu_starts_at_once() -> None:
    """Both pools on device 0; the embedding pool's queue is full of batch work, yet the chat
    is admitted at position 0 with the prediction of an idle pool, and runs to its end while
    the flood is still queued."""
    embed = mock_pool(
        "embed", "e5", supported_workloads=["embedding"], mock=SLOW_BATCH, queue={"capacity": 64}
    )
    chat = mock_pool("chat", "m0")
    async with running_server(config_of(embed, chat)) as srv:
        queued = await flood(srv, "e5")
        chat_body = task_body(max_tokens=4)
        admitted = (await srv.submit(chat_body)).json()
        frames = await srv.stream(chat_body["task_id"])
        still_queued = srv.deps.service.pool_status("embed").queue_depth
    positions = [q["queue_position"] for q in queued[1:]]
    assert sorted(positions) == positions
    assert queued[-1]["predicted_start_ms"] > 0
    assert (0, 0) == (admitted["queue_position"], admitted["predicted_start_ms"])
    assert "end" == frames[-1][0]
    assert still_queued > 0


async def test_interactive_chat_jumps_the_batch_flood_on_a_shared_pool() -> None:
    """One pool serves chat and embeddings: the interactive chat is placed ahead of every
    queued batch embedding task, it is told a start well before the last batch task was, and it
    starts before any task that was queued when it arrived."""
    pool = mock_pool(
        "shared",
        "m0",
        supported_workloads=["completion", "embedding"],
        mock=SLOW_BATCH,
        queue={"capacity": 64},
    )
    async with running_server(config_of(pool)) as srv:
        queued = await flood(srv, "m0")
        service = srv.deps.service
        await wait_until(lambda: service.pool_status("shared").running == 1, "one running")
        ids = [q["task_id"] for q in queued]
        waiting = [i for i in ids if service.task_status(i).state.value == "queued"]
        chat_body = task_body(max_tokens=4)
        admitted = (await srv.submit(chat_body)).json()
        behind = service.task_status(waiting[0]).queue_position
        frames = await srv.stream(chat_body["task_id"])
        chat = service.task_status(chat_body["task_id"])
        first_waiting = service.task_status(waiting[0])
    assert 0 == admitted["queue_position"]
    assert admitted["predicted_start_ms"] < queued[-1]["predicted_start_ms"]
    assert 1 == behind
    assert "end" == frames[-1][0]
    assert chat.started_at is not None
    assert first_waiting.started_at is None or chat.started_at <= first_waiting.started_at
