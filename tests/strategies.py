"""Shared Hypothesis strategies for the scheduling core (attrs' ``tests/strategies.py`` shape)."""

from __future__ import annotations

from hypothesis import strategies as st

from llama_orch.core.model import (
    Affinity,
    JobSpec,
    PlacementInput,
    PlacementOverrides,
    PoolSnapshot,
    ReplicaView,
    Stage,
)
from llama_orch.vocab import Engine, PlacementMode, Priority

POOL_IDS = ("gpu0", "gpu1", "gpu2", "gpu3")
MODELS = ("m0", "m1")
ENGINES = (Engine.MOCK, Engine.LLAMACPP)
FEATURES = ("mmproj", "speculative_decode")
GiB = 1024**3

priorities = st.sampled_from(list(Priority))
engines = st.sampled_from(ENGINES)
models = st.sampled_from(MODELS)
feature_sets = st.sets(st.sampled_from(FEATURES)).map(lambda f: tuple(sorted(f)))


@st.composite
def replica_views(draw: st.DrawFn, pool_id: str, engine: Engine, index: int) -> ReplicaView:
    slots = draw(st.integers(1, 4))
    return ReplicaView(
        replica_id=f"r{index}",
        pool_id=pool_id,
        engine=engine,
        # Mostly one version per set, sometimes a clash to exercise the replica-set filter.
        engine_version=draw(st.sampled_from(("v1",) * 8 + ("v2",))),
        free_vram=draw(st.sampled_from((4 * GiB, 8 * GiB, 12 * GiB, 24 * GiB))),
        active_slots=draw(st.integers(0, slots)),
        slots_total=slots,
        ctx_max_supported=draw(st.sampled_from((2048, 4096, 8192))),
        ready=draw(st.sampled_from((True, True, True, False))),
        draining=draw(st.sampled_from((False, False, False, False, True))),
        perf_tokens_per_s=draw(st.sampled_from((None, 20.0, 50.0))),
    )


@st.composite
def pool_views(draw: st.DrawFn, pool_id: str | None = None) -> PoolSnapshot:
    """One pool with one to four replicas; every attribute decide looks at varies."""
    pid = pool_id or draw(st.sampled_from(POOL_IDS))
    engine = draw(engines)
    replicas = tuple(draw(replica_views(pid, engine, i)) for i in range(draw(st.integers(1, 4))))
    free = max(r.free_vram for r in replicas)
    return PoolSnapshot(
        id=pid,
        engine=engine,
        model_id=draw(models),
        slots_total=sum(r.slots_total for r in replicas),
        slots_free=sum(r.slots_free for r in replicas),
        vram_total_bytes=24 * GiB,
        vram_free_bytes=free,
        ready=draw(st.sampled_from((True, True, True, False))),
        draining=draw(st.sampled_from((False, False, False, True))),
        ctx_max_supported=max(r.ctx_max_supported for r in replicas),
        queued=draw(st.integers(0, 5)),
        device_mask=draw(st.sampled_from(((0,), (1,), (0, 1)))),
        features=draw(feature_sets),
        perf_tokens_per_s=draw(st.sampled_from((None, 30.0))),
        replicas=replicas,
    )


@st.composite
def pool_sets(draw: st.DrawFn, max_pools: int = 4) -> tuple[PoolSnapshot, ...]:
    """Pools with distinct ids."""
    ids = draw(st.permutations(POOL_IDS))[: draw(st.integers(1, max_pools))]
    return tuple(draw(pool_views(pid)) for pid in ids)


@st.composite
def overrides(draw: st.DrawFn, pool_ids: tuple[str, ...] = POOL_IDS) -> PlacementOverrides:
    """Overrides that mostly name pools that exist, so they bite as often as they miss."""
    mode = draw(st.sampled_from((PlacementMode.AUTO, PlacementMode.AUTO, *PlacementMode)))
    ids = st.sampled_from(pool_ids) | st.sampled_from(POOL_IDS)
    pool_lists = st.sets(ids, max_size=2).map(lambda p: tuple(sorted(p)))
    return PlacementOverrides(
        mode=mode,
        pin_pool_id=draw(ids) if mode is PlacementMode.PIN else None,
        prefer_pools=draw(pool_lists.filter(bool)) if mode is PlacementMode.PREFER else (),
        avoid_pools=draw(st.just(()) | pool_lists),
        require_device_mask=draw(st.sampled_from((None, None, None, (0,), (0, 1)))),
        allow_fallback=draw(st.booleans()),
    )


@st.composite
def jobs(
    draw: st.DrawFn, pools: tuple[PoolSnapshot, ...] = (), with_overrides: bool = True
) -> JobSpec:
    """A job; given ``pools``, it usually asks for an engine and model one of them serves."""
    pool_ids = tuple(p.id for p in pools) or POOL_IDS
    if pools and draw(st.integers(0, 4)):
        target = draw(st.sampled_from(pools))
        engine, model = target.engine, target.model_id
    else:
        engine, model = draw(engines), draw(models)
    affinity = None
    if draw(st.booleans()):
        affinity = Affinity(
            draw(st.sampled_from(pool_ids)),
            f"r{draw(st.integers(0, 2))}",
            expires_at=draw(st.sampled_from((5.0, 50.0))),
        )
    return JobSpec(
        priority=draw(priorities),
        engine=engine,
        model_id=model,
        required_ctx=draw(st.sampled_from((1024, 1024, 2048, 4096, 8192))),
        expected_tokens=draw(st.none() | st.integers(1, 512)),
        est_kv_bytes=draw(st.sampled_from((None, None, None, 6 * GiB, 16 * GiB))),
        required_extensions=draw(st.sampled_from(((), (), (), ("mmproj",)))),
        placement=draw(overrides(pool_ids)) if with_overrides else PlacementOverrides(),
        session_id="s",
        affinity=affinity,
    )


@st.composite
def placement_inputs(draw: st.DrawFn, with_overrides: bool = True) -> PlacementInput:
    pools = draw(pool_sets())
    return PlacementInput(
        pools=pools,
        job=draw(jobs(pools, with_overrides=with_overrides)),
        now=10.0,
        stage=draw(st.sampled_from(list(Stage))),
    )


#: One queue operation: ("enqueue", priority), ("dequeue", None) or ("cancel", index).
queue_ops = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), priorities),
        st.tuples(st.just("dequeue"), st.none()),
        st.tuples(st.just("cancel"), st.integers(0, 40)),
    ),
    max_size=60,
)
