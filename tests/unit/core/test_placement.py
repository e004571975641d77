"""decide(): every filter's edge, the tie-break order, overrides and affinity (ORCH-3251/3952)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from llama_orch.core.model import (
    Affinity,
    AffinityOutcome,
    Assigned,
    JobSpec,
    NoCapacity,
    NoCapacityReason,
    PlacementInput,
    PlacementOverrides,
    PoolSnapshot,
    ReplicaView,
    Stage,
)
from llama_orch.core.placement import decide
from llama_orch.vocab import Engine, PlacementMode, Priority

GiB = 1024**3


def replica(pool_id: str, index: int = 0, **kw: Any) -> ReplicaView:
    fields: dict[str, Any] = {
        "replica_id": f"r{index}",
        "pool_id": pool_id,
        "engine": Engine.LLAMACPP,
        "engine_version": "b1",
        "free_vram": 20 * GiB,
        "active_slots": 0,
        "slots_total": 2,
        "ctx_max_supported": 8192,
    }
    fields.update(kw)
    return ReplicaView(**fields)


def pool(pool_id: str, *replicas: ReplicaView, **kw: Any) -> PoolSnapshot:
    reps = replicas or (replica(pool_id),)
    fields: dict[str, Any] = {
        "id": pool_id,
        "engine": Engine.LLAMACPP,
        "model_id": "llama-8b",
        "slots_total": sum(r.slots_total for r in reps),
        "slots_free": sum(r.slots_free for r in reps),
        "vram_total_bytes": 24 * GiB,
        "vram_free_bytes": max(r.free_vram for r in reps),
        "ready": True,
        "draining": False,
        "ctx_max_supported": 8192,
        "device_mask": (0,),
        "replicas": reps,
    }
    fields.update(kw)
    return PoolSnapshot(**fields)


def pool_3090(**kw: Any) -> PoolSnapshot:
    """The 24 GB card of the reference workstation, one replica, device 0."""
    return pool("gpu0", replica("gpu0", free_vram=20 * GiB), device_mask=(0,), **kw)


def pool_3060(**kw: Any) -> PoolSnapshot:
    """The 12 GB card, one replica, device 1."""
    return pool(
        "gpu1",
        replica("gpu1", free_vram=10 * GiB),
        device_mask=(1,),
        vram_total_bytes=12 * GiB,
        **kw,
    )


def job(**kw: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "priority": Priority.INTERACTIVE,
        "engine": Engine.LLAMACPP,
        "model_id": "llama-8b",
        "required_ctx": 4096,
    }
    fields.update(kw)
    return JobSpec(**fields)


def place(*pools: PoolSnapshot, stage: Stage = Stage.ADMISSION, now: float = 0.0, **kw: Any):  # type: ignore[no-untyped-def]
    return decide(PlacementInput(tuple(pools), job(**kw), now, stage))


def assigned(decision: object) -> tuple[str, str]:
    assert isinstance(decision, Assigned), decision
    return decision.pool_id, decision.replica_id


class TestFeasibility:
    @pytest.mark.parametrize(
        ("pool_kw", "job_kw", "reason"),
        [
            ({"engine": Engine.VLLM}, {}, NoCapacityReason.NO_POOL_SERVES),
            ({"model_id": "other"}, {}, NoCapacityReason.NO_POOL_SERVES),
            ({"ctx_max_supported": 4095}, {}, NoCapacityReason.NO_CAPABLE_POOL),
            ({}, {"required_extensions": ("mmproj",)}, NoCapacityReason.NO_CAPABLE_POOL),
            ({"quant": "Q8_0"}, {"required_quant": "Q4_K_M"}, NoCapacityReason.NO_CAPABLE_POOL),
            ({}, {"min_compute_capability": (8, 0)}, NoCapacityReason.NO_CAPABLE_POOL),
            ({"vram_free_bytes": GiB}, {"est_kv_bytes": GiB + 1}, NoCapacityReason.NO_CAPABLE_POOL),
            ({"ready": False}, {}, NoCapacityReason.NO_READY_POOL),
            ({"draining": True}, {}, NoCapacityReason.NO_READY_POOL),
        ],
    )
    def test_each_filter_refuses(
        self, pool_kw: dict[str, Any], job_kw: dict[str, Any], reason: NoCapacityReason
    ) -> None:
        """A pool failing one requirement is never chosen, and the reason says which stage."""
        decision = place(pool_3090(**pool_kw), **job_kw)
        assert isinstance(decision, NoCapacity)
        assert reason == decision.reason

    def test_boundaries_are_inclusive(self) -> None:
        """ctx equal to the limit, VRAM equal to the estimate and a matching capability fit."""
        target = pool_3090(
            ctx_max_supported=4096,
            vram_free_bytes=GiB,
            compute_capability=(8, 6),
            features=("mmproj",),
            quant="Q4_K_M",
        )
        target = replace(target, replicas=(replica("gpu0", ctx_max_supported=4096),))
        decision = place(
            target,
            est_kv_bytes=GiB,
            min_compute_capability=(8, 6),
            required_extensions=("mmproj",),
            required_quant="Q4_K_M",
        )
        assert ("gpu0", "r0") == assigned(decision)

    def test_unready_is_flagged_only_when_capable(self) -> None:
        """NoCapacity is `unready` when a capable pool is merely not Ready (503 POOL_UNREADY)."""
        unready = place(pool_3090(ready=False))
        incapable = place(pool_3090(ctx_max_supported=10))
        assert isinstance(unready, NoCapacity) and isinstance(incapable, NoCapacity)
        assert (True, False) == (unready.unready, incapable.unready)

    def test_device_mask_must_match_exactly(self) -> None:
        """require_device_mask keeps only pools with exactly that mask; a superset is refused."""
        both = pool("both", replica("both"), device_mask=(0, 1))
        overrides = PlacementOverrides(require_device_mask=(1,))
        decision = place(pool_3090(), pool_3060(), both, placement=overrides)
        assert ("gpu1", "r0") == assigned(decision)
        assert isinstance(
            place(both, placement=PlacementOverrides(require_device_mask=(0,))), NoCapacity
        )

    def test_mixed_replica_set_is_skipped(self) -> None:
        """A pool whose replicas run different engine versions is not placed on (OC-CORE-1031)."""
        mixed = pool(
            "gpu0", replica("gpu0", 0), replica("gpu0", 1, engine_version="b2", free_vram=99 * GiB)
        )
        assert ("gpu1", "r0") == assigned(place(mixed, pool_3060()))

    def test_unready_or_draining_replica_is_skipped(self) -> None:
        """Within a Ready pool, only Ready, non-draining replicas are candidates."""
        target = pool(
            "gpu0",
            replica("gpu0", 0, ready=False, free_vram=30 * GiB),
            replica("gpu0", 1, draining=True, free_vram=30 * GiB),
            replica("gpu0", 2),
        )
        assert ("gpu0", "r2") == assigned(place(target))

    def test_dispatch_needs_a_free_slot(self) -> None:
        """At dispatch a busy replica is skipped; with none free the answer is no_free_slot."""
        busy = replica("gpu0", 0, active_slots=2, free_vram=30 * GiB)
        target = pool("gpu0", busy, replica("gpu0", 1))
        assert ("gpu0", "r0") == assigned(place(target))
        assert ("gpu0", "r1") == assigned(place(target, stage=Stage.DISPATCH))
        full = pool("gpu0", busy)
        decision = place(full, stage=Stage.DISPATCH)
        assert isinstance(decision, NoCapacity)
        assert NoCapacityReason.NO_FREE_SLOT == decision.reason


class TestOrdering:
    def test_more_free_vram_wins_first(self) -> None:
        """The 3090 with more free VRAM wins even with a longer queue (HME-010)."""
        decision = place(pool_3060(), pool_3090(queued=5))
        assert ("gpu0", "r0") == assigned(decision)
        assert isinstance(decision, Assigned)
        assert ("free_vram_desc",) == decision.log.tie_breakers_applied

    def test_then_least_loaded(self) -> None:
        """With equal VRAM, fewer active slots plus queued tasks wins."""
        a = pool("a", replica("a", active_slots=1))
        b = pool("b", replica("b"), queued=2)
        c = pool("c", replica("c"))
        decision = place(a, b, c)
        assert ("c", "r0") == assigned(decision)
        assert isinstance(decision, Assigned)
        assert ("free_vram_desc", "load_asc") == decision.log.tie_breakers_applied

    def test_then_perf_then_ids(self) -> None:
        """Then higher perf, then pool id, then replica id, each recorded when it decided."""
        fast = pool("b", replica("b", perf_tokens_per_s=80.0))
        slow = pool("a", replica("a", perf_tokens_per_s=40.0))
        decision = place(slow, fast)
        assert ("b", "r0") == assigned(decision)
        tied = place(pool("b"), pool("a"))
        assert ("a", "r0") == assigned(tied)
        assert isinstance(tied, Assigned)
        assert "pool_id_asc" == tied.log.tie_breakers_applied[-1]
        same_pool = place(pool("a", replica("a", 1), replica("a", 0)))
        assert ("a", "r0") == assigned(same_pool)
        assert isinstance(same_pool, Assigned)
        assert "replica_id_asc" == same_pool.log.tie_breakers_applied[-1]


class TestOverrides:
    def test_pin(self) -> None:
        """pin goes only to its pool, even when another pool scores better."""
        decision = place(
            pool_3090(), pool_3060(), placement=PlacementOverrides(PlacementMode.PIN, "gpu1")
        )
        assert ("gpu1", "r0") == assigned(decision)
        assert isinstance(decision, Assigned) and decision.log.pinned

    def test_pin_infeasible_or_unready(self) -> None:
        """A pinned pool that cannot take the job gives pinned_pool_infeasible."""
        overrides = PlacementOverrides(PlacementMode.PIN, "gpu1")
        unready = place(pool_3090(), pool_3060(ready=False), placement=overrides)
        incapable = place(pool_3090(), pool_3060(ctx_max_supported=8), placement=overrides)
        for decision in (unready, incapable):
            assert isinstance(decision, NoCapacity)
            assert NoCapacityReason.PINNED_POOL_INFEASIBLE == decision.reason
        assert isinstance(unready, NoCapacity) and isinstance(incapable, NoCapacity)
        assert (True, False) == (unready.unready, incapable.unready)

    def test_prefer_with_and_without_fallback(self) -> None:
        """prefer scores only preferred pools; when none is feasible it falls back or refuses."""
        prefer = PlacementOverrides(PlacementMode.PREFER, prefer_pools=("gpu1",))
        assert ("gpu1", "r0") == assigned(place(pool_3090(), pool_3060(), placement=prefer))
        fallback = place(pool_3090(), pool_3060(ready=False), placement=prefer)
        assert ("gpu0", "r0") == assigned(fallback)
        assert isinstance(fallback, Assigned) and fallback.log.fallback_used
        strict = replace(prefer, allow_fallback=False)
        refused = place(pool_3090(), pool_3060(ready=False), placement=strict)
        assert isinstance(refused, NoCapacity)
        assert NoCapacityReason.NO_PREFERRED_FEASIBLE == refused.reason

    def test_avoid(self) -> None:
        """avoid_pools are always removed; avoiding every feasible pool refuses."""
        avoid = PlacementOverrides(avoid_pools=("gpu0",))
        assert ("gpu1", "r0") == assigned(place(pool_3090(), pool_3060(), placement=avoid))
        decision = place(pool_3090(), placement=avoid)
        assert isinstance(decision, NoCapacity)
        assert NoCapacityReason.ALL_AVOIDED == decision.reason

    def test_no_overrides_is_auto(self) -> None:
        """Default overrides behave exactly like automatic placement (ORCH-3908)."""
        plain = place(pool_3090(), pool_3060())
        explicit = place(pool_3090(), pool_3060(), placement=PlacementOverrides())
        assert plain == explicit


class TestAffinity:
    def two_replicas(self, busy: bool = False) -> PoolSnapshot:
        return pool(
            "gpu0",
            replica("gpu0", 0),
            replica("gpu0", 1, free_vram=10 * GiB, active_slots=2 if busy else 0),
        )

    def test_kept_while_ttl_lasts(self) -> None:
        """The session's last replica wins over a better-scored one while its TTL is live."""
        affinity = Affinity("gpu0", "r1", expires_at=10.0)
        decision = place(self.two_replicas(), affinity=affinity, now=5.0)
        assert ("gpu0", "r1") == assigned(decision)
        assert isinstance(decision, Assigned)
        assert (AffinityOutcome.KEPT, True) == (decision.log.affinity, decision.log.kv_warmth)
        assert ("session_affinity",) == decision.log.tie_breakers_applied

    def test_failover_when_busy(self) -> None:
        """A busy last replica means failover: kv_warmth and kv_migrated are false."""
        affinity = Affinity("gpu0", "r1", expires_at=10.0)
        decision = place(self.two_replicas(busy=True), affinity=affinity, now=5.0)
        assert ("gpu0", "r0") == assigned(decision)
        assert isinstance(decision, Assigned)
        log = decision.log
        assert (AffinityOutcome.FAILOVER, False, False) == (
            log.affinity,
            log.kv_warmth,
            log.kv_migrated,
        )

    def test_expired_ttl_rescores(self) -> None:
        """After the soft TTL the ordinary order applies."""
        affinity = Affinity("gpu0", "r1", expires_at=10.0)
        decision = place(self.two_replicas(), affinity=affinity, now=10.0)
        assert ("gpu0", "r0") == assigned(decision)
        assert isinstance(decision, Assigned)
        assert AffinityOutcome.NONE == decision.log.affinity


class TestDecisionLog:
    def test_filters_are_listed_with_counts(self) -> None:
        """The log names each filter with what it kept out of what it saw."""
        decision = place(pool_3090(), pool_3060(ready=False), pool("x", model_id="other"))
        assert isinstance(decision, Assigned)
        log = decision.log
        assert 3 == log.candidates_considered
        assert "model 2/3" in log.filters_applied and "ready 1/2" in log.filters_applied
        fields = log.fields()
        assert ("gpu0", "r0", False, False) == (
            fields["selected_pool_id"],
            fields["selected_replica_id"],
            fields["pinned"],
            fields["fallback_used"],
        )


class TestSnapshotVersion:
    def test_assignments_record_the_input_version(self) -> None:
        """An Assigned decision's log carries the topology version of its input (ORCH-3410)."""
        placement = PlacementInput((pool_3090(),), job(), snapshot_version=41)
        decision = decide(placement)
        assert (Assigned, 41) == (type(decision), decision.log.snapshot_version)

    def test_refusals_record_the_input_version(self) -> None:
        """A NoCapacity decision's log carries it too, and so do the narration fields."""
        placement = PlacementInput((pool_3090(ready=False),), job(), snapshot_version=7)
        decision = decide(placement)
        assert (NoCapacity, 7) == (type(decision), decision.log.fields()["snapshot_version"])
