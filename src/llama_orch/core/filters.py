"""Feasibility filters (ORCH-3901, ORCH-3411, OC-CORE-1010/1011/1016): small, pure, named.

Each filter takes the surviving candidates and the job and returns the ones it keeps; the chain
records ``"<name> kept/before"`` for the ``DecisionLog``, in the GPUStack filter-chain shape
without the I/O. Pool filters run first, so replica filters only see replicas of pools that
can serve the job at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from llama_orch.core.model import JobSpec, PoolSnapshot, ReplicaView

Candidate = tuple[PoolSnapshot, ReplicaView]
T = TypeVar("T")
Filter = Callable[[list[T], JobSpec], list[T]]


def apply_chain(
    items: list[T], job: JobSpec, chain: Sequence[Filter[T]], log: list[str]
) -> list[T]:
    for keep in chain:
        before = len(items)
        items = keep(items, job)
        log.append(f"{keep.__name__} {len(items)}/{before}")
        if not items:
            break
    return items


# -- pools: does this pool serve the job's engine and model at all? -------------------------


def engine(pools: list[PoolSnapshot], job: JobSpec) -> list[PoolSnapshot]:
    return [p for p in pools if p.engine is job.engine]


def model(pools: list[PoolSnapshot], job: JobSpec) -> list[PoolSnapshot]:
    return [p for p in pools if p.model_id == job.model_id]


# -- pools: can it meet the job's requirements? ----------------------------------------------


def workload(pools: list[PoolSnapshot], job: JobSpec) -> list[PoolSnapshot]:
    return [p for p in pools if job.workload in p.workloads]


def ctx(pools: list[PoolSnapshot], job: JobSpec) -> list[PoolSnapshot]:
    return [p for p in pools if p.ctx_max_supported >= job.required_ctx]


def extensions(pools: list[PoolSnapshot], job: JobSpec) -> list[PoolSnapshot]:
    required = job.required_extensions
    if not required:
        return pools
    return [p for p in pools if set(required) <= set(p.features)]


def quant(pools: list[PoolSnapshot], job: JobSpec) -> list[PoolSnapshot]:
    if job.required_quant is None:
        return pools
    return [p for p in pools if p.quant == job.required_quant]


def compute_capability(pools: list[PoolSnapshot], job: JobSpec) -> list[PoolSnapshot]:
    """An unknown compute capability never meets a stated minimum: it is not guessed."""
    minimum = job.min_compute_capability
    if minimum is None:
        return pools
    return [
        p for p in pools if p.compute_capability is not None and p.compute_capability >= minimum
    ]


def vram(pools: list[PoolSnapshot], job: JobSpec) -> list[PoolSnapshot]:
    need = job.est_kv_bytes
    if need is None:
        return pools
    return [p for p in pools if p.vram_free_bytes >= need]


def device_mask(pools: list[PoolSnapshot], job: JobSpec) -> list[PoolSnapshot]:
    """``require_device_mask`` keeps only pools whose mask matches exactly (ORCH-3903)."""
    mask = job.placement.require_device_mask
    if mask is None:
        return pools
    wanted = tuple(sorted(set(mask)))
    return [p for p in pools if tuple(sorted(set(p.device_mask))) == wanted]


# -- pools: may it take work now? ------------------------------------------------------------


def ready(pools: list[PoolSnapshot], job: JobSpec) -> list[PoolSnapshot]:
    return [p for p in pools if p.ready]


def not_draining(pools: list[PoolSnapshot], job: JobSpec) -> list[PoolSnapshot]:
    return [p for p in pools if not p.draining]


def replica_set(pools: list[PoolSnapshot], job: JobSpec) -> list[PoolSnapshot]:
    """A pool whose Ready replicas disagree on versions is no single replica set (OC-CORE-1031).

    Only the fact is checked here, on the hot path; ``replica_set_conflict`` explains it.
    """
    return [
        p
        for p in pools
        if len({(r.engine_version, r.sampler_profile_version) for r in p.replicas if r.ready}) <= 1
    ]


# -- replicas --------------------------------------------------------------------------------


def replica_ctx(candidates: list[Candidate], job: JobSpec) -> list[Candidate]:
    return [c for c in candidates if c[1].ctx_max_supported >= job.required_ctx]


def replica_ready(candidates: list[Candidate], job: JobSpec) -> list[Candidate]:
    return [c for c in candidates if c[1].ready and not c[1].draining]


def free_slot(candidates: list[Candidate], job: JobSpec) -> list[Candidate]:
    return [c for c in candidates if c[1].active_slots < c[1].slots_total]


MATCH_FILTERS: tuple[Filter[PoolSnapshot], ...] = (engine, model)
CAPABILITY_FILTERS: tuple[Filter[PoolSnapshot], ...] = (
    workload,
    ctx,
    extensions,
    quant,
    compute_capability,
    vram,
    device_mask,
)
READY_FILTERS: tuple[Filter[PoolSnapshot], ...] = (ready, not_draining, replica_set)
REPLICA_CAPABILITY_FILTERS: tuple[Filter[Candidate], ...] = (replica_ctx,)
REPLICA_READY_FILTERS: tuple[Filter[Candidate], ...] = (replica_ready,)
