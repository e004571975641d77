"""``GET /v1/capabilities`` built from the adapter host's capability cache (ORCH-3603/3095).

Each replica's entry is the snapshot its engine last reported through the host's probes
(engine_version, ctx_max, slots, model, features, simulated). Pool and engine entries aggregate
those snapshots; config supplies only what engines cannot know: the declared concurrency, the
configured ctx cap, rate limits, device masks and the server's own feature switches. A replica
not probed successfully yet has ``cached: false`` and contributes nothing.
"""

from __future__ import annotations

from typing import Any

from llama_orch.adapters.host import AdapterHost, CapabilitySnapshot
from llama_orch.contracts.api import (
    API_VERSION,
    Capabilities,
    EngineCapability,
    HostCapability,
    HostGpu,
    PoolCapability,
    ReplicaCapability,
    VramEstimate,
)
from llama_orch.pool.manager import PoolManager, PoolRuntime
from llama_orch.vocab import Engine, Workload


def _replica(
    replica_id: str, snap: CapabilitySnapshot | None, host: str | None = None
) -> ReplicaCapability:
    if snap is None:
        return ReplicaCapability(replica_id=replica_id, cached=False, host=host)
    props = snap.props
    return ReplicaCapability(
        replica_id=replica_id,
        cached=True,
        host=host,
        engine_version=snap.engine_version,
        ctx_max=props.ctx_max,
        slots_total=props.slots_total,
        model_id=props.model_id,
        model_digest=props.model_digest,
        features=dict(props.features),
        simulated=snap.simulated,
    )


def _one(values: list[Any]) -> Any:
    """The value every replica agrees on, else None (mixed or unknown)."""
    distinct = {v for v in values if v is not None}
    return distinct.pop() if len(distinct) == 1 else None


def _estimate(pools: PoolManager | None, pool_id: str) -> VramEstimate | None:
    models = pools.models if pools is not None else None
    estimate = models.estimate(pool_id) if models is not None else None
    if estimate is None:
        return None
    return VramEstimate(
        weights_bytes=estimate.weights_bytes,
        kv_bytes=estimate.kv_bytes,
        overhead_bytes=estimate.overhead_bytes,
        total_bytes=estimate.total_bytes,
        ctx=estimate.ctx,
        slots=estimate.slots,
    )


def pool_capability(
    pool: PoolRuntime, host: AdapterHost, pools: PoolManager | None = None
) -> PoolCapability:
    cached = host.pool_capabilities(pool.id)
    snaps = [cached[r.replica_id] for r in pool.replicas if r.replica_id in cached]
    replicas = [
        _replica(
            r.replica_id,
            cached.get(r.replica_id),
            (r.process.host if r.process else None) or pool.config.host_for(r.replica_id),
        )
        for r in pool.replicas
    ]
    engine_ctx = [s.props.ctx_max for s in snaps if s.props.ctx_max]
    limits = [*engine_ctx, *([pool.config.ctx] if pool.config.ctx else [])]
    features: dict[str, Any] = {}
    for snap in reversed(snaps):  # the first replica wins where replicas disagree
        features.update(snap.props.features)
    engine_slots = [s.props.slots_total for s in snaps]
    return PoolCapability(
        pool_id=pool.id,
        engine=pool.config.engine,
        engine_version=_one([s.engine_version for s in snaps]),
        model_id=pool.config.model,
        ctx_max=min(limits) if limits else 0,
        slots_total=pool.slots_total,
        ready=pool.ready,
        draining=pool.draining,
        device_mask=list(pool.devices),
        supported_workloads=list(pool.config.supported_workloads),
        simulated=pool.simulated or any(s.simulated for s in snaps),
        features=features,
        engine_model_id=_one([s.props.model_id for s in snaps]),
        model_digest=_one([s.props.model_digest for s in snaps])
        or (pools.models.digest(pool.id) if pools is not None and pools.models else None),
        sampler_profile_version=_one([s.props.sampler_profile_version for s in snaps])
        or pool.config.sampler_profile_version,
        engine_slots_total=sum(n for n in engine_slots if n is not None)
        if snaps and None not in engine_slots
        else None,
        replicas=replicas,
        vram_estimate=_estimate(pools, pool.id),
    )


def hosts_of(pools: PoolManager) -> list[HostCapability]:
    """Every cluster host a pool names or an agent reported, with its latest GPU reading."""
    names = {h for p in pools.pools.values() for h in p.config.cluster_hosts}
    names |= {*pools.host_inventories, *pools.stale_hosts}
    out = []
    for name in sorted(names):
        inventory = pools.host_inventories.get(name)
        gpus = [
            HostGpu(
                index=g.index,
                name=g.name,
                vram_total_bytes=g.vram_total_bytes,
                vram_free_bytes=g.vram_free_bytes,
                simulated=g.simulated,
            )
            for g in (inventory.gpus if inventory is not None else ())
        ]
        out.append(HostCapability(name=name, stale=name in pools.stale_hosts, gpus=gpus))
    return out


def capabilities_of(
    pools: PoolManager, host: AdapterHost, *, placement_overrides: bool
) -> Capabilities:
    runtimes = list(pools.pools.values())
    pool_caps = [pool_capability(p, host, pools) for p in runtimes]
    by_engine: dict[Engine, list[tuple[PoolRuntime, PoolCapability]]] = {}
    for runtime, cap in zip(runtimes, pool_caps, strict=True):
        by_engine.setdefault(cap.engine, []).append((runtime, cap))
    engine_caps = []
    for engine, members in sorted(by_engine.items(), key=lambda kv: kv[0].value):
        rate_limits = {
            f"{p.id}.{klass.name.value}": klass.rate_limit_rps
            for p, _ in members
            for klass in p.config.admission.priorities
            if klass.rate_limit_rps
        }
        versions = {
            r.engine_version for _, cap in members for r in cap.replicas if r.engine_version
        }
        engine_caps.append(
            EngineCapability(
                engine=engine,
                ctx_max=max(cap.ctx_max for _, cap in members),
                concurrency=sum(cap.slots_total for _, cap in members),
                engine_versions=sorted(versions),
                supported_workloads=sorted(
                    {w for _, cap in members for w in cap.supported_workloads},
                    key=list(Workload).index,
                ),
                rate_limits=rate_limits,
                features={
                    "streaming": True,
                    "simulated": any(cap.simulated for _, cap in members),
                    "placement_overrides": placement_overrides,
                    # An external API's GPUs are not visible here: the operator vouches for them.
                    **({"gpu_backing": "operator-claimed"} if engine is Engine.OPENAI else {}),
                },
            )
        )
    return Capabilities(
        api_version=API_VERSION,
        engines=engine_caps,
        pools=pool_caps,
        hosts=hosts_of(pools),
        simulated=any(cap.simulated for cap in pool_caps),
        snapshot_version=pools.snapshot_version,
    )
