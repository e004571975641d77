"""Properties of ``core.decide``: it agrees with a brute-force oracle on random pools and jobs."""

from __future__ import annotations

import copy

from hypothesis import given, settings

from llama_orch.core.model import (
    AffinityOutcome,
    Assigned,
    JobSpec,
    NoCapacity,
    NoCapacityReason,
    PlacementInput,
    PoolSnapshot,
    ReplicaView,
    Stage,
)
from llama_orch.core.placement import decide
from llama_orch.core.scoring import order_key
from llama_orch.vocab import PlacementMode
from tests.strategies import placement_inputs

Candidate = tuple[PoolSnapshot, ReplicaView]


def feasible(pool: PoolSnapshot, replica: ReplicaView, job: JobSpec, stage: Stage) -> bool:
    """Every feasibility rule of ORCH-3901 / OC-CORE-1016, written out plainly."""
    mask = job.placement.require_device_mask
    return (
        pool.engine is job.engine
        and pool.model_id == job.model_id
        and pool.ctx_max_supported >= job.required_ctx
        and set(job.required_extensions) <= set(pool.features)
        and (job.est_kv_bytes is None or pool.vram_free_bytes >= job.est_kv_bytes)
        and (mask is None or sorted(set(mask)) == sorted(set(pool.device_mask)))
        and pool.ready
        and not pool.draining
        and len({r.engine_version for r in pool.replicas if r.ready}) <= 1
        and replica.ctx_max_supported >= job.required_ctx
        and replica.ready
        and not replica.draining
        and (stage is Stage.ADMISSION or replica.active_slots < replica.slots_total)
    )


def oracle(placement: PlacementInput) -> tuple[list[Candidate], bool]:
    """The candidates that may win after overrides, and whether the fallback was needed."""
    job, o = placement.job, placement.job.placement
    cands = [
        (p, r) for p in placement.pools for r in p.replicas if feasible(p, r, job, placement.stage)
    ]
    if o.mode is PlacementMode.PIN:
        cands = [c for c in cands if c[0].id == o.pin_pool_id]
    cands = [c for c in cands if c[0].id not in o.avoid_pools]
    if o.mode is PlacementMode.PREFER and cands:
        preferred = [c for c in cands if c[0].id in o.prefer_pools]
        if preferred:
            return preferred, False
        return (cands, True) if o.allow_fallback else ([], False)
    return cands, False


class TestDecideAgainstOracle:
    @settings(max_examples=400, deadline=None)
    @given(placement_inputs())
    def test_matches_oracle(self, placement: PlacementInput) -> None:
        """decide assigns exactly when something is feasible, never picks an infeasible,
        avoided or non-pinned replica, honours affinity, and otherwise picks the minimum of the
        SPEC §5.5 tuple."""
        cands, fallback = oracle(placement)
        decision = decide(placement)
        if not cands:
            assert isinstance(decision, NoCapacity)
            if placement.job.placement.mode is PlacementMode.PIN:
                assert NoCapacityReason.PINNED_POOL_INFEASIBLE == decision.reason
            return
        assert isinstance(decision, Assigned)
        chosen = {(p.id, r.replica_id): (p, r) for p, r in cands}
        assert (decision.pool_id, decision.replica_id) in chosen
        assert fallback == decision.log.fallback_used
        affinity = placement.job.affinity
        live = affinity is not None and placement.now < affinity.expires_at
        kept = live and any(
            (p.id, r.replica_id) == (affinity.pool_id, affinity.replica_id) and r.slots_free > 0
            for p, r in cands
        )
        if kept:
            assert affinity is not None
            assert (affinity.pool_id, affinity.replica_id) == (
                decision.pool_id,
                decision.replica_id,
            )
            assert AffinityOutcome.KEPT == decision.log.affinity
        else:
            best = min(order_key(p, r) for p, r in cands)
            assert best == order_key(*chosen[(decision.pool_id, decision.replica_id)])
            expected = AffinityOutcome.FAILOVER if live else AffinityOutcome.NONE
            assert expected == decision.log.affinity
            assert not decision.log.kv_warmth and not decision.log.kv_migrated


class TestDeterminism:
    @settings(max_examples=200, deadline=None)
    @given(placement_inputs())
    def test_identical_inputs_identical_decisions(self, placement: PlacementInput) -> None:
        """Deciding twice, or on a deep copy, gives the same decision and log (ORCH-3905)."""
        assert decide(placement) == decide(copy.deepcopy(placement)) == decide(placement)

    @settings(max_examples=200, deadline=None)
    @given(placement_inputs())
    def test_pool_order_does_not_matter(self, placement: PlacementInput) -> None:
        """The order pools are listed in never changes the outcome."""
        reversed_input = PlacementInput(
            tuple(reversed(placement.pools)), placement.job, placement.now, placement.stage
        )
        first, second = decide(placement), decide(reversed_input)
        assert type(first) is type(second)
        if isinstance(first, Assigned) and isinstance(second, Assigned):
            assert (first.pool_id, first.replica_id) == (second.pool_id, second.replica_id)
