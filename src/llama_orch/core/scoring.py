"""The ordering of feasible candidates (SPEC §5.5, D-CORE-06, OC-CORE-1012/1017).

Sort by (free VRAM desc, load asc, perf desc, pool id asc, replica id asc), where load is the
replica's active slots plus the tasks queued on its pool. The normative VRAM-first order wins
over the draft's load-first order (SPEC §17.6).
"""

from __future__ import annotations

from llama_orch.core.model import PoolSnapshot, ReplicaView

TIE_BREAKERS: tuple[str, ...] = (
    "free_vram_desc",
    "load_asc",
    "perf_desc",
    "pool_id_asc",
    "replica_id_asc",
)

OrderKey = tuple[int, int, float, str, str]


def order_key(pool: PoolSnapshot, replica: ReplicaView) -> OrderKey:
    perf = replica.perf_tokens_per_s or pool.perf_tokens_per_s or 0.0
    return (
        -replica.free_vram,
        replica.active_slots + pool.queued,
        -perf,
        pool.id,
        replica.replica_id,
    )


def decisive_tie_breakers(best: OrderKey, runner_up: OrderKey) -> tuple[str, ...]:
    """The criteria that were needed to tell the winner from the runner-up, in order."""
    for depth, (a, b) in enumerate(zip(best, runner_up, strict=True)):
        if a != b:
            return TIE_BREAKERS[: depth + 1]
    return TIE_BREAKERS
