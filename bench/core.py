"""Scheduling core: decide() latency, queue operation cost and memory per queued task.

``python -m bench core``. Targets (issue 3): decide <= 50 us over 64 replicas, an enqueue or a
dequeue <= 5 us, <= 2 KB per queued task, all flat as the queue grows from 1k to 100k tasks.
Numbers are medians of repeated batches on this machine; nothing here is asserted by tests.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator

from llama_orch.core.model import (
    JobSpec,
    PlacementInput,
    PoolSnapshot,
    ReplicaView,
    Stage,
)
from llama_orch.core.placement import decide
from llama_orch.core.queue import AdmissionQueue
from llama_orch.vocab import Engine, Priority

GiB = 1024**3
SIZES = (1_000, 10_000, 100_000)
TARGET_DECIDE_US = 50.0
TARGET_QUEUE_US = 5.0
TARGET_BYTES = 2048


def _pools(n_pools: int, per_pool: int, queued: int) -> tuple[PoolSnapshot, ...]:
    """``n_pools`` x ``per_pool`` replicas, all feasible (the worst case: nothing filtered)."""
    pools = []
    for p in range(n_pools):
        pid = f"pool{p:02d}"
        replicas = tuple(
            ReplicaView(
                replica_id=f"r{r:02d}",
                pool_id=pid,
                engine=Engine.LLAMACPP,
                engine_version="b4000",
                free_vram=(8 + (p * 7 + r) % 16) * GiB,
                active_slots=(p + r) % 4,
                slots_total=4,
                ctx_max_supported=8192,
                perf_tokens_per_s=40.0 + (r % 3),
            )
            for r in range(per_pool)
        )
        pools.append(
            PoolSnapshot(
                id=pid,
                engine=Engine.LLAMACPP,
                model_id="llama-8b",
                slots_total=4 * per_pool,
                slots_free=sum(r.slots_free for r in replicas),
                vram_total_bytes=24 * GiB,
                vram_free_bytes=max(r.free_vram for r in replicas),
                ready=True,
                draining=False,
                ctx_max_supported=8192,
                queued=queued // n_pools,
                device_mask=(p % 2,),
                engine_version="b4000",
                replicas=replicas,
            )
        )
    return tuple(pools)


JOB = JobSpec(
    priority=Priority.INTERACTIVE,
    engine=Engine.LLAMACPP,
    model_id="llama-8b",
    required_ctx=4096,
    expected_tokens=256,
    est_kv_bytes=2 * GiB,
)


def _median_us(fn: Callable[[], object], *, batch: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter_ns() - start) / batch / 1000)
    return statistics.median(samples)


def bench_decide() -> None:
    print("decide(): median us per decision, 64 replicas, all feasible")
    print(f"  {'shape':<28}{'queued':>8}{'us':>9}  (target <= {TARGET_DECIDE_US:.0f})")
    shapes = (
        ("admission 16 pools x 4", 16, 4, Stage.ADMISSION),
        ("admission 64 pools x 1", 64, 1, Stage.ADMISSION),
        ("dispatch 1 pool x 64", 1, 64, Stage.DISPATCH),
    )
    for name, n_pools, per_pool, stage in shapes:
        for queued in SIZES:
            placement = PlacementInput(_pools(n_pools, per_pool, queued), JOB, 0.0, stage)
            decide(placement)
            us = _median_us(lambda p=placement: decide(p), batch=200, repeats=15)  # type: ignore[misc]
            print(f"  {name:<28}{queued:>8}{us:>9.1f}")


def _filled(n: int) -> tuple[AdmissionQueue, list[str]]:
    queue = AdmissionQueue(n + 10)
    ids = [str(uuid.UUID(int=i)) for i in range(n)]
    for i, task_id in enumerate(ids):
        queue.enqueue(task_id, Priority.BATCH if i % 4 == 0 else Priority.INTERACTIVE)
    return queue, ids


def bench_queue() -> None:
    print("queue: median us per operation at a steady depth")
    print(f"  {'queued':>8}{'enqueue':>10}{'dequeue':>10}{'cancel':>10}  (target <= 5)")
    for n in SIZES:
        queue, _ = _filled(n)
        fresh = [str(uuid.UUID(int=10**9 + i)) for i in range(20_000)]
        counter = iter(fresh)

        def enqueue_dequeue(q: AdmissionQueue = queue, ids: Iterator[str] = counter) -> None:
            q.enqueue(next(ids), Priority.INTERACTIVE)
            q.dequeue()

        pair_us = _median_us(enqueue_dequeue, batch=1000, repeats=15)
        # Split the pair: time enqueues alone, then the dequeues that restore the depth.
        extra = [str(uuid.UUID(int=2 * 10**9 + i)) for i in range(10_000)]
        start = time.perf_counter_ns()
        for task_id in extra:
            queue.enqueue(task_id, Priority.BATCH)
        enqueue_us = (time.perf_counter_ns() - start) / len(extra) / 1000
        start = time.perf_counter_ns()
        for _ in extra:
            queue.dequeue()
        dequeue_us = (time.perf_counter_ns() - start) / len(extra) / 1000
        victims = list(queue.view(Priority.INTERACTIVE))[: min(5000, n // 2)]
        start = time.perf_counter_ns()
        for task_id in victims:
            queue.cancel(task_id)
        cancel_us = (time.perf_counter_ns() - start) / max(1, len(victims)) / 1000
        print(
            f"  {n:>8}{enqueue_us:>10.2f}{dequeue_us:>10.2f}{cancel_us:>10.2f}"
            f"   (enqueue+dequeue pair {pair_us:.2f} us)"
        )


def bench_memory() -> None:
    print("memory: bytes per queued task (queue structures + the task id string)")
    for n in SIZES:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        queue, ids = _filled(n)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        per_task = grown / n
        print(f"  {n:>8} queued: {per_task:7.0f} B/task  (target <= {TARGET_BYTES})")
        del queue, ids


def _task_record(i: int) -> object:
    """What the dispatcher holds for one queued task besides the queue entry (short prompt)."""
    from llama_orch.contracts.engine import GenerateRequest
    from llama_orch.dispatch.tasks import Task

    task_id = str(uuid.UUID(int=i))
    return Task(
        id=task_id,
        session_id=str(uuid.UUID(int=i // 4)),
        pool_id="pool00",
        engine=Engine.LLAMACPP,
        model="llama-8b",
        priority=Priority.INTERACTIVE,
        request=GenerateRequest(task_id=task_id, prompt="hello", max_tokens=64, model="llama-8b"),
        admitted_at=float(i),
        deadline_at=float(i) + 30,
        expected_tokens=64,
        job=JOB,
    )


def bench_task_records() -> None:
    print("memory: bytes per queued task record in the dispatcher (Task, request, stream)")
    _task_record(0)  # imports and first-use caches are not per-task costs
    for n in SIZES:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        records = {i: _task_record(i) for i in range(n)}
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        print(f"  {n:>8} queued: {grown / n:7.0f} B/task")
        del records


def main() -> None:
    bench_decide()
    bench_queue()
    bench_memory()
    bench_task_records()
