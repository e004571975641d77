"""A careless or hostile client and operator against a full queue: backoff advice, drains and
cancels racing admissions, and the gauges and counters once it is all over (``llorch serve``,
simulated mock pool)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.faults._raw import serve_config
from tests.support.serve_process import serve_process
from tests.support.server import mock_pool, task_body

#: 20 tokens a second: a 400-token task holds the pool's one slot for 20 s.
SLOW = {"ttft_ms": 5, "tokens_per_s": 20.0}
LONG_DEADLINE_MS = 600_000
#: How far a prediction may be revised beyond the time that passed, as tokens come in bursts.
REVISION_MS = 1000


async def _wait_health(
    client: httpx.AsyncClient, predicate: Any, pool_id: str = "p0", timeout_s: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = (await client.get(f"/v1/pools/{pool_id}/health")).json()
        if predicate(health):
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"pool {pool_id} health never matched: {health}")


async def _submit(client: httpx.AsyncClient, **overrides: Any) -> httpx.Response:
    body = task_body(**{"deadline_ms": LONG_DEADLINE_MS, **overrides})
    return await client.post("/v1/tasks", json=body)


async def _occupy(client: httpx.AsyncClient) -> None:
    """Start a task that holds the pool's one slot for 20 s, and wait for its first token:
    from then on the prediction of when it ends only comes nearer."""
    assert 202 == (await _submit(client, max_tokens=400)).status_code
    deadline = time.monotonic() + 30
    while True:
        running = (await client.get("/v1/status")).json()["task"]["running"]
        if running and running[0]["tokens_out"] > 0:
            return
        assert time.monotonic() < deadline, f"the blocker never streamed: {running}"
        await asyncio.sleep(0.05)


def _advice(response: httpx.Response) -> int:
    """A 429's retry advice, checked to say the same in the body and both headers."""
    assert 429 == response.status_code, response.text
    body = response.json()
    retry_ms = body["retry_after_ms"]
    assert isinstance(retry_ms, int) and retry_ms > 0
    assert str(retry_ms) == response.headers["x-backoff-ms"]
    assert str(max(1, math.ceil(retry_ms / 1000))) == response.headers["retry-after"]
    assert f"retry in about {retry_ms} ms" in body["message"]
    return retry_ms


class TestFullQueueAdvice:
    async def test_the_advice_is_when_a_place_frees_whatever_the_refused_task(
        self, tmp_path: Path
    ) -> None:
        """A full queue frees a place when its head starts, 20 s away here: advice to retry
        within a second (what a small task was told) sends every client back 20 times for
        nothing, and the refused task's own size (a big one was told minutes) has no bearing
        on when the place frees."""
        pool = mock_pool(mock=SLOW, queue={"capacity": 2, "full_policy": "reject"})
        with serve_process(serve_config(pool), tmp_path) as srv:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                await _occupy(client)
                asked = time.monotonic()
                head = await _submit(client, max_tokens=2)
                assert (202, 0) == (head.status_code, head.json()["queue_position"])
                head_starts_ms = head.json()["predicted_start_ms"]
                assert 202 == (await _submit(client, max_tokens=2)).status_code
                small_ms = _advice(await _submit(client, max_tokens=1))
                big_ms = _advice(await _submit(client, max_tokens=3000, ctx=4096))
                passed_ms = (time.monotonic() - asked) * 1000
        # The head's start comes nearer by about the time that passed (the blocker's tokens
        # may arrive in a burst after a stall: a second of slack), never farther.
        assert head_starts_ms - passed_ms - REVISION_MS <= big_ms <= small_ms <= head_starts_ms

    async def test_a_full_class_frees_a_place_when_its_own_head_starts(
        self, tmp_path: Path
    ) -> None:
        """With the batch class at its queue_capacity, a batch place frees when the batch head
        starts, behind the interactive task queued before it, not when that one starts."""
        priorities = [{"name": "batch", "queue_capacity": 1}]
        pool = mock_pool(mock=SLOW, admission={"priorities": priorities})
        with serve_process(serve_config(pool), tmp_path) as srv:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                await _occupy(client)
                assert 202 == (await _submit(client, max_tokens=200)).status_code
                asked = time.monotonic()
                batch_head = await _submit(client, max_tokens=2, priority="batch")
                assert (202, 1) == (batch_head.status_code, batch_head.json()["queue_position"])
                batch_starts_ms = batch_head.json()["predicted_start_ms"]
                refused_ms = _advice(await _submit(client, max_tokens=2, priority="batch"))
                passed_ms = (time.monotonic() - asked) * 1000
        assert batch_starts_ms - passed_ms - REVISION_MS <= refused_ms <= batch_starts_ms


def _scrape(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


async def settled(client: httpx.AsyncClient, pool_id: str = "p0") -> str:
    """Once the pool holds no lease and queues nothing, the metrics scrape."""
    await _wait_health(
        client, lambda h: h["active_leases"] == 0 and h["metrics"]["queue_depth"] == 0, pool_id
    )
    return (await client.get("/metrics")).text


def every_enqueued_task_accounted(scrape: str) -> None:
    """A task leaves the queue by starting, or by ending there (canceled, expired, drained:
    counted with ``replica_id="none"``), or by eviction (a drop-lru rejection)."""
    enqueued = _scrape(scrape, "tasks_enqueued_total")
    started = _scrape(scrape, "tasks_started_total")
    ended_queued = _scrape(scrape, "tasks_canceled_total", replica_id="none")
    evicted = _scrape(scrape, "tasks_rejected_total", reason="QUEUE_FULL_DROP_LRU")
    assert enqueued == started + ended_queued + evicted, (enqueued, started, ended_queued, evicted)
    assert 0 == _scrape(scrape, "queue_depth")
    assert 0 == _scrape(scrape, "active_leases")


class TestDrainCounts:
    async def test_queued_tasks_a_drain_ends_are_counted(self, tmp_path: Path) -> None:
        """The tasks a drain ends in the queue are counted as canceled for the drain, as the
        running ones it stops are: they used to be counted nowhere, so tasks_enqueued_total
        could not be reconciled with what started and what ended."""
        with serve_process(serve_config(mock_pool(mock=SLOW)), tmp_path) as srv:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                await _occupy(client)
                for _ in range(3):
                    assert 202 == (await _submit(client, max_tokens=2)).status_code
                drain = await client.post("/v1/pools/p0/drain", json={"deadline_ms": 200})
                assert (202, 3) == (drain.status_code, drain.json()["queued_ended"])
                scrape = await settled(client)
        assert 3 == _scrape(scrape, "tasks_canceled_total", reason="drain", replica_id="none")
        assert 1 == _scrape(scrape, "tasks_canceled_total", reason="drain", replica_id="r0")
        every_enqueued_task_accounted(scrape)


async def terminal(client: httpx.AsyncClient, task_id: str) -> tuple[str, dict[str, Any]]:
    """The terminal frame of a task's stream (bounded by the client's timeout)."""
    response = await client.get(f"/v1/tasks/{task_id}/stream")
    assert 200 == response.status_code, response.text
    frames = [
        line.split(": ", 1)[1]
        for line in response.text.splitlines()
        if line.startswith(("event", "data"))
    ]
    return frames[-2], json.loads(frames[-1])


class TestDrainRacingAdmissions:
    async def test_every_task_admitted_around_a_drain_ends_and_is_counted(
        self, tmp_path: Path
    ) -> None:
        """Forty submissions, a drain and cancels of half the tasks, all at once: each task is
        refused (a retriable 503 POOL_UNREADY), or admitted and then ends (run, canceled, or ended
        by the drain with a retriable POOL_UNAVAILABLE); none is left queued, and the gauges
        and counters add up."""
        pool = mock_pool(mock=SLOW, slots=2, queue={"capacity": 64, "full_policy": "reject"})
        with serve_process(serve_config(pool), tmp_path) as srv:
            limits = httpx.Limits(max_connections=128)
            async with httpx.AsyncClient(base_url=srv.url, timeout=30, limits=limits) as client:
                bodies = [
                    task_body(max_tokens=(2, 40, 400)[i % 3], deadline_ms=LONG_DEADLINE_MS)
                    for i in range(40)
                ]
                submits = [client.post("/v1/tasks", json=body) for body in bodies]
                cancels = [client.post(f"/v1/tasks/{b['task_id']}/cancel") for b in bodies[::2]]
                drain = client.post("/v1/pools/p0/drain", json={"deadline_ms": 300})
                answers = await asyncio.gather(*submits[:20], drain, *cancels, *submits[20:])
                drained = answers.pop(20)
                submitted = answers[:20] + answers[-20:]
                admitted = [
                    body["task_id"]
                    for body, answer in zip(bodies, submitted, strict=True)
                    if answer.status_code == 202
                ]
                ends = [await terminal(client, task_id) for task_id in admitted]
                scrape = await settled(client)
        refused = [answer for answer in submitted if answer.status_code != 202]
        assert {(503, "POOL_UNREADY", True)} >= {
            (r.status_code, r.json()["code"], r.json()["retriable"]) for r in refused
        }
        assert {204, 404} >= {r.status_code for r in answers[20:-20]}
        assert 202 == drained.status_code
        for event, data in ends:
            assert event == "end" or (data["code"], data["retriable"]) == ("POOL_UNAVAILABLE", True)
        drain_ended = sum(1 for event, _ in ends if event == "error")
        assert drain_ended == drained.json()["queued_ended"]
        assert len(admitted) == _scrape(scrape, "tasks_enqueued_total")
        assert len(refused) == _scrape(scrape, "tasks_rejected_total", reason="POOL_UNREADY")
        every_enqueued_task_accounted(scrape)
