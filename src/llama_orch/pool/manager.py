"""PoolManager: replicas, three-gate readiness, leases, and snapshots for placement.

A replica is Ready only when all three gates pass (ORCH-3504): the model is present, the engine
is ensured, and the engine's health check passes. The manager binds each replica's adapter into
the ``AdapterHost``, probes health on a loop, and tells the dispatcher when capacity changes.

Topology version (ORCH-3410): ``snapshot_version`` is a monotonic counter bumped on every
readiness flip (a freshness lapse included), drain flag change, replica bind or rebind and
engine_version change. Placement inputs and decision logs carry it.

Freshness (ORCH-3971, SPEC §17.22): a Ready replica whose last successful health probe is older
than the stale window (5 s, or two probe intervals when those are longer) is shown to placement
as not Ready until a probe succeeds again. A replica on a cluster host whose agent missed its
last inventory deadline is stale the same way until the host answers again.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from prometheus_client import Gauge

from llama_orch.adapters.host import AdapterHost, BreakerPolicy, RetryPolicy
from llama_orch.config import PoolConfig
from llama_orch.contracts.engine import EngineAdapter
from llama_orch.core.model import PoolSnapshot, ReplicaView
from llama_orch.core.replica_set import replica_set_conflict
from llama_orch.errors import EngineUnreachable, WorkerError, WorkerReset
from llama_orch.observability.metrics import Metrics, ReplicaMetrics
from llama_orch.observability.narration import narrate
from llama_orch.pool.engine_process import ProcessState, Supervision, is_launched
from llama_orch.pool.gpus import Gpu, GpuInventory
from llama_orch.pool.launch import HostInventories
from llama_orch.provisioners.pool_models import PoolModels
from llama_orch.supervisor import Supervisor
from llama_orch.vocab import Engine, ProvisioningMode

#: Context limit used when neither the pool config nor the engine states one.
UNKNOWN_CTX = 2**31 - 1

#: Seconds without a successful health probe after which a snapshot is stale (SPEC §17.22).
STALE_AFTER_S = 5.0
#: How long start-up waits for every replica's first probe, so the first requests find ready
#: pools Ready. An engine slower than that (hung, or behind retries and read timeouts) does not
#: hold the server: its probe goes on, and its pool turns Ready once the engine answers.
FIRST_PROBE_WAIT_S = 2.0

AdapterFactory = Callable[[PoolConfig, int], EngineAdapter]
#: replica id -> (measured tokens/s, first-token ms), for placement's perf fields.
PerfOf = Callable[[str], tuple[float | None, float | None]]


class ReplicaState(Enum):
    #: Created; gates not evaluated yet.
    STARTING = "starting"
    #: All three gates pass; placement may use it.
    READY = "ready"
    #: A gate fails (``last_error`` says which); the health loop keeps probing.
    UNREADY = "unready"


#: How many of an engine's served models a model-gate error names, and how much of each.
SERVED_NAMED = 5
SERVED_NAME_MAX = 80


def unserved_model(model: str, served: tuple[str, ...] | None) -> str | None:
    """Why the model gate fails when the engine lists what it serves and ``model`` is not
    among it; None when it is, or when the engine cannot say (no list: not blocked)."""
    if served is None or model in served:
        return None
    # repr escapes what an engine may put in a name to forge a log line or drive a terminal.
    listing = ", ".join(repr(name[:SERVED_NAME_MAX]) for name in served[:SERVED_NAMED])
    listing = listing or "no model"
    if len(served) > SERVED_NAMED:
        listing += f" and {len(served) - SERVED_NAMED} more"
    return (
        f"the engine does not serve model {model!r}; it serves {listing}: "
        "start it with that model (or point the pool at the model it serves)"
    )


@dataclass(slots=True)
class Gates:
    model_present: bool = False
    engine_ensured: bool = False
    healthy: bool = False

    @property
    def all_pass(self) -> bool:
        return self.model_present and self.engine_ensured and self.healthy


@dataclass(slots=True)
class Replica:
    pool_id: str
    replica_id: str
    devices: tuple[int, ...]
    slots_total: int
    state: ReplicaState = ReplicaState.STARTING
    gates: Gates = field(default_factory=Gates)
    active: int = 0
    engine_version: str = "unknown"
    ctx_max: int = UNKNOWN_CTX
    last_error: str | None = None
    perf_tokens_per_s: float | None = None
    first_token_ms: float | None = None
    metrics: ReplicaMetrics | None = None
    #: The adapter host's circuit-breaker state for this replica (closed, open, half_open).
    breaker: str | None = None
    #: Manager clock reading of the last successful health probe (the heartbeat).
    last_heartbeat: float | None = None
    #: True while the replica is Ready but its heartbeat is older than the stale window.
    stale: bool = False
    #: True after a broken stream or a refused connection, until a probe passes: the replica
    #: stays Ready (tasks are admitted and queue) but takes no new task (no free slot).
    held: bool = False
    #: ``kv_cache_usage_ratio`` child, bound on the first value the engine reports.
    kv_gauge: Gauge | None = None
    #: The engine process llama-orch launched for this replica (None: external or mock).
    process: ProcessState | None = None


@dataclass(slots=True)
class PoolRuntime:
    config: PoolConfig
    replicas: list[Replica]
    devices: tuple[int, ...]
    simulated: bool
    draining: bool = False

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def ready(self) -> bool:
        return (
            any(r.state is ReplicaState.READY for r in self.replicas)
            and not self.draining
            and self.replica_set_conflict is None
        )

    @property
    def replica_set_conflict(self) -> str | None:
        """Why the Ready replicas do not form one replica set, if they do not (OC-CORE-1031)."""
        return replica_set_conflict(
            self.id,
            (
                (r.replica_id, r.engine_version, self.config.sampler_profile_version)
                for r in self.replicas
                if r.state is ReplicaState.READY
            ),
        )

    @property
    def stopped(self) -> bool:
        """Every replica's engine stopped restarting (restart storm): none turns Ready again
        before a reload."""
        return bool(self.replicas) and all(
            r.process is not None and r.process.storm for r in self.replicas
        )

    @property
    def slots_total(self) -> int:
        return sum(r.slots_total for r in self.replicas)

    @property
    def active_leases(self) -> int:
        return sum(r.active for r in self.replicas)

    @property
    def ctx_max(self) -> int:
        """Effective model limit: the smallest of the configured ctx and the engine's limit."""
        limits = [r.ctx_max for r in self.replicas]
        engine_limit = min(limits) if limits else UNKNOWN_CTX
        return min(self.config.ctx or UNKNOWN_CTX, engine_limit)

    @property
    def engine_version(self) -> str | None:
        versions = {r.engine_version for r in self.replicas if r.engine_version != "unknown"}
        return versions.pop() if len(versions) == 1 else None

    @property
    def last_error(self) -> str | None:
        conflict = self.replica_set_conflict
        if conflict is not None:
            return conflict
        return next((r.last_error for r in self.replicas if r.last_error), None)


class PoolManager:
    def __init__(
        self,
        pools: list[PoolConfig],
        inventory: GpuInventory,
        host: AdapterHost,
        adapter_factory: AdapterFactory,
        metrics: Metrics,
        *,
        probe_interval_s: float = 2.0,
        stale_after_s: float = STALE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        models: PoolModels | None = None,
        supervisor: Supervisor | None = None,
        supervision: Supervision | None = None,
    ) -> None:
        #: The catalog view of each pool's model: the model_present gate, VRAM estimates.
        self.models = models
        self._host = host
        self._supervisor = supervisor or Supervisor(metrics)
        self._factory = adapter_factory
        self._metrics = metrics
        self._inventory = inventory
        self._probe_interval_s = probe_interval_s
        # A probe cadence slower than the window would make every replica flap stale.
        self.stale_after_s = max(stale_after_s, 2 * probe_interval_s)
        self._clock = clock
        #: Monotonic topology version (ORCH-3410); see the module docstring.
        self.snapshot_version = 0
        self._probe_loops: list[str] = []
        self._first_probes: list[asyncio.Task[None]] = []
        self._listeners: list[Callable[[str], None]] = []
        self._forget_listeners: list[Callable[[str, str], None]] = []
        self.pools: dict[str, PoolRuntime] = {}
        #: Where the GPU sampler asks cluster hosts for their inventories (None: one machine).
        self.host_source: HostInventories | None = supervision.hosts if supervision else None
        #: host -> the inventory its agent last reported.
        self.host_inventories: dict[str, GpuInventory] = {}
        #: Hosts whose agent missed the last inventory deadline: their replicas are stale.
        self.stale_hosts: set[str] = set()
        for cfg in pools:
            devices = tuple(cfg.devices) if cfg.devices is not None else inventory.indices
            simulated = cfg.engine is Engine.MOCK or inventory.simulated
            replicas = [Replica(cfg.id, f"r{i}", devices, cfg.slots) for i in range(cfg.replicas)]
            if is_launched(cfg):
                for replica in replicas:
                    replica.process = ProcessState()
            self.pools[cfg.id] = PoolRuntime(cfg, replicas, devices, simulated)
            metrics.init_pool_lifecycle(cfg.id, [r.replica_id for r in replicas])
        # Launched engines are supervised by the lifecycle; imported here to keep it optional.
        from llama_orch.pool.lifecycle import PoolLifecycle

        self.lifecycle = PoolLifecycle(
            self, host, adapter_factory, supervision, metrics, probe_interval_s, self._supervisor
        )

    @property
    def inventory(self) -> GpuInventory:
        return self._inventory

    def refresh_inventory(self, inventory: GpuInventory) -> None:
        """Take a fresh GPU reading (the sampler's), so free VRAM tracks what engines use."""
        if inventory.gpus:
            self._inventory = inventory

    def refresh_hosts(self, readings: Mapping[str, GpuInventory | None]) -> None:
        """Take the cluster hosts' inventories (the sampler's poll); None: the host's agent
        missed its deadline, so its replicas turn stale until it answers again."""
        back = False
        for host, inventory in readings.items():
            if inventory is not None:
                back = back or host in self.stale_hosts or host not in self.host_inventories
                self.host_inventories[host] = inventory
            stale = inventory is None
            if stale is (host in self.stale_hosts):
                continue
            if stale:
                self.stale_hosts.add(host)
            else:
                self.stale_hosts.discard(host)
            self._metrics.cluster_host_stale.labels(host).set(1 if stale else 0)
            self._bump()
            narrate(
                "pool-manager",
                "host-stale" if stale else "host-fresh",
                host,
                f"Host {host} "
                + (
                    "missed its inventory deadline: its replicas take no new work."
                    if stale
                    else "answers again: its replicas take work after their next probe."
                ),
                level="warning" if stale else "info",
                host=host,
                snapshot_version=self.snapshot_version,
            )
            for pool in self.pools.values():
                if any(self.host_of(r) == host for r in pool.replicas):
                    self._notify(pool.id)
        if back:
            # Any host will do: a spread pool's replica may land on whichever answers.
            self.lifecycle.hosts_back()

    def host_of(self, replica: Replica) -> str | None:
        """The cluster host a replica runs on (or will run on); None: this machine."""
        if replica.process is not None and replica.process.host is not None:
            return replica.process.host
        pool = self.pools.get(replica.pool_id)
        return pool.config.host_for(replica.replica_id) if pool is not None else None

    def _host_stale(self, replica: Replica) -> bool:
        host = self.host_of(replica)
        return host is not None and host in self.stale_hosts

    def _inventory_on(self, host: str | None) -> GpuInventory:
        """The GPUs of ``host`` (None: this machine), as its agent last reported them; this
        machine's until it first answered."""
        if host is not None and host in self.host_inventories:
            return self.host_inventories[host]
        return self._inventory

    def _hosts_of(self, pool: PoolRuntime) -> list[str | None]:
        """Each host the pool's replicas run on, once (a spread pool has several)."""
        hosts = list(dict.fromkeys(self.host_of(r) for r in pool.replicas))
        return hosts or [next(iter(pool.config.cluster_hosts), None)]

    def _devices_on(self, pool: PoolRuntime, host: str | None) -> list[Gpu]:
        """The pool's devices as ``host`` reports them (those it has)."""
        inventory = self._inventory_on(host)
        return [g for g in map(inventory.by_index, pool.devices) if g is not None]

    def _free_on(self, pool: PoolRuntime, host: str | None) -> dict[int, int]:
        """Free VRAM of each of the pool's devices on ``host``."""
        return {g.index: g.vram_free_bytes for g in self._devices_on(pool, host)}

    def free_per_gpu(self, pool: PoolRuntime) -> dict[int, int]:
        """Free VRAM per device where the pool has least of it: its model must fit on every
        host one of its replicas loads it on."""
        return min(
            (self._free_on(pool, host) for host in self._hosts_of(pool)),
            key=lambda free: sum(free.values()),
        )

    def on_capacity_change(self, listener: Callable[[str], None]) -> None:
        """Register a callback run with the pool id whenever slots or readiness change."""
        self._listeners.append(listener)

    def on_forget(self, listener: Callable[[str, str], None]) -> None:
        """Register a callback run with (pool id, replica id) when a replica is dropped."""
        self._forget_listeners.append(listener)

    def _notify(self, pool_id: str) -> None:
        for listener in self._listeners:
            listener(pool_id)

    def _bump(self) -> None:
        self.snapshot_version += 1

    def set_draining(self, pool_id: str, draining: bool) -> None:
        """Flip a pool's drain flag; a draining pool takes no new work (ORCH-3505)."""
        pool = self.pools[pool_id]
        if pool.draining is draining:
            return
        pool.draining = draining
        self._bump()
        self._metrics.pool_ready.labels(pool_id).set(1 if pool.ready else 0)
        narrate(
            "pool-manager",
            "drain",
            pool_id,
            f"Pool {pool_id} {'starts' if draining else 'stops'} draining.",
            pool_id=pool_id,
            draining=draining,
            snapshot_version=self.snapshot_version,
        )
        self._notify(pool_id)

    def fresh(self, replica: Replica) -> bool:
        """Whether placement may trust the replica's Ready state (ORCH-3971).

        Marks a Ready replica stale, bumping the version, the first time its heartbeat lapses.
        """
        if replica.state is not ReplicaState.READY:
            return False
        heartbeat = replica.last_heartbeat
        host = self.host_of(replica)
        host_stale = self._host_stale(replica)
        lapsed = heartbeat is None or self._clock() - heartbeat > self.stale_after_s or host_stale
        if lapsed and not replica.stale:
            replica.stale = True
            self._bump()
            since = "none yet" if heartbeat is None else f"{self._clock() - heartbeat:.1f} s ago"
            why = (
                f"host {host} missed its inventory deadline"
                if host_stale
                else f"last heartbeat {since}"
            )
            narrate(
                "pool-manager",
                "stale",
                replica.pool_id,
                f"Skips replica {replica.pool_id}/{replica.replica_id}: {why}.",
                level="warning",
                pool_id=replica.pool_id,
                replica_id=replica.replica_id,
                host=host,
                stale_after_ms=int(self.stale_after_s * 1000),
                last_error=replica.last_error,
                snapshot_version=self.snapshot_version,
            )
        return not lapsed

    async def start(self) -> None:
        if self.models is not None:
            self.models.hold_served()
            self.models.stage_missing()
        self._host.on_engine_fault(self._on_engine_fault)
        await self.lifecycle.start()
        for pool in self.pools.values():
            cfg = pool.config
            if is_launched(cfg):
                continue  # the lifecycle binds each replica once its engine runs
            for index, replica in enumerate(pool.replicas):
                self._host.bind(
                    pool.id,
                    replica.replica_id,
                    self._factory(cfg, index),
                    retry=RetryPolicy.from_config(cfg.http, cfg.backoff),
                    breaker=BreakerPolicy.from_config(cfg.circuit_breaker),
                )
                self._bump()
        first = {
            (pool.id, replica.replica_id): self._supervisor.owned(
                self._evaluate(pool, replica), name=f"first-probe-{pool.id}-{replica.replica_id}"
            )
            for pool in self.pools.values()
            for replica in pool.replicas
        }
        self._first_probes = list(first.values())
        if first:
            _, pending = await asyncio.wait(first.values(), timeout=FIRST_PROBE_WAIT_S)
            if pending:
                waiting = sorted(f"{p}/{r}" for (p, r), task in first.items() if task in pending)
                narrate(
                    "pool-manager",
                    "first-probe",
                    ", ".join(waiting),
                    f"Serves before {len(waiting)} replica(s) answered a first health probe "
                    f"within {FIRST_PROBE_WAIT_S:g} s ({', '.join(waiting)}); each stays "
                    "unready until its engine answers.",
                    level="warning",
                    replicas=waiting,
                )
        # One loop per replica: a slow or hung engine delays only its own heartbeat, never
        # another replica's (whose heartbeat would otherwise lapse and go stale).
        for pool in self.pools.values():
            if is_launched(pool.config):
                continue  # the lifecycle watches launched engines itself
            for replica in pool.replicas:
                name = f"probe-{pool.id}-{replica.replica_id}"
                after = first[(pool.id, replica.replica_id)]
                loop = functools.partial(self._probe_loop, pool, replica, after)
                self._supervisor.loop(name, loop)
                self._probe_loops.append(name)

    async def stop(self) -> None:
        for task in self._first_probes:
            task.cancel()
        self._first_probes = []
        await self._supervisor.cancel_loops(self._probe_loops)
        self._probe_loops = []
        await self.lifecycle.stop()
        await self._host.aclose()
        if self.models is not None:
            self.models.release()

    async def _probe_loop(
        self, pool: PoolRuntime, replica: Replica, after: asyncio.Task[None] | None = None
    ) -> None:
        if after is not None and not after.done():
            # Never two probes of one replica at once: the first one is still waiting.
            await asyncio.wait({after})
        while True:
            await asyncio.sleep(self._probe_interval_s)
            await self._evaluate(pool, replica)

    async def probe_all(self) -> None:
        """Probe every replica at once: one slow or hung engine must not delay the others."""
        await asyncio.gather(
            *(self._evaluate(pool, r) for pool in self.pools.values() for r in pool.replicas)
        )

    def _engine_gate(self, pool: PoolRuntime, replica: Replica) -> str | None:
        """None when the engine is ensured, else why not."""
        cfg = pool.config
        if cfg.engine is Engine.MOCK:
            return None
        assert cfg.provisioning is not None  # config validation guarantees it
        if cfg.provisioning.mode is ProvisioningMode.EXTERNAL:
            return None
        process = replica.process
        if process is not None and self.lifecycle.enabled:
            if process.prepared is not None and process.running:
                return None
            return process.last_exit or "engine not started yet"
        return (
            f"provisioning mode {cfg.provisioning.mode.value} is not available in this build; "
            "start the engine yourself and use provisioning.mode: external with endpoint"
        )

    async def _evaluate(
        self, pool: PoolRuntime, replica: Replica, serving: PoolConfig | None = None
    ) -> None:
        """Re-check the three gates of one replica and publish any change (``serving``: the
        config the replica's engine was started with, when a reload starts it)."""
        gates = Gates()
        error: str | None = self._engine_gate(pool, replica)
        gates.engine_ensured = error is None
        # An external engine serves the model it was started with; other pools whose model is
        # a ref wait for it in the catalog (present, Active, fitting the GPUs' free VRAM).
        model_error = (
            self.models.gate(pool.id, self.free_per_gpu(pool), serving) if self.models else None
        )
        gates.model_present = model_error is None
        if replica.process is not None and replica.process.model_path is None:
            # A launched engine needs its model file before it can start.
            model_error = model_error or "the pool's model is not present on this machine"
            gates.model_present = False
        if gates.engine_ensured:
            try:
                # External engines answer on their own health and props endpoints; the host
                # retries these idempotent probes and reports the replica's circuit breaker.
                health = await self._host.health(pool.id, replica.replica_id)
                replica.breaker = health.breaker
                gates.healthy = health.live and health.ready
                if not gates.healthy:
                    error = f"engine health: live={health.live} ready={health.ready}" + (
                        f" ({health.detail})" if health.detail else ""
                    )
                else:
                    snapshot = await self._host.refresh_capabilities(pool.id, replica.replica_id)
                    self._apply_capabilities(
                        pool, replica, snapshot.engine_version, snapshot.props.ctx_max
                    )
                    unserved = unserved_model(
                        (serving or pool.config).model, snapshot.props.served_models
                    )
                    if unserved is not None:
                        gates.model_present = False
                        model_error = model_error or unserved
                    replica.perf_tokens_per_s = snapshot.props.perf_tokens_per_s
                    replica.first_token_ms = snapshot.props.first_token_ms
                    self._set_kv_usage(replica, snapshot.props.kv_cache_usage_ratio)
                    replica.last_heartbeat = self._clock()
                    if replica.held:
                        # The probe passed: the replica takes work again.
                        replica.held = False
                        self._bump()
                        self._notify(pool.id)
            except WorkerError as exc:
                # Health answered but props or version did not: not Ready until both do.
                gates.healthy = False
                error = exc.message
        if model_error is not None and gates.engine_ensured:
            # The engine's own problem, when it has one, is the one to fix first.
            error = model_error
        self.publish(pool, replica, gates, error)

    def publish(self, pool: PoolRuntime, replica: Replica, gates: Gates, error: str | None) -> None:
        """Set a replica's gates; a state change bumps the version and tells placement."""
        replica.gates = gates
        new_state = ReplicaState.READY if gates.all_pass else ReplicaState.UNREADY
        replica.last_error = error
        if (
            new_state is ReplicaState.READY
            and replica.stale
            and replica.state is new_state
            and not self._host_stale(replica)
        ):
            # The heartbeat is back: placement may use the replica again.
            replica.stale = False
            self._bump()
            self._notify(pool.id)
        if new_state is not replica.state:
            previous = replica.state
            replica.state = new_state
            replica.stale = False
            self._bump()
            self._metrics.pool_ready.labels(pool.id).set(1 if pool.ready else 0)
            narrate(
                "pool-manager",
                "readiness",
                pool.id,
                f"Replica {pool.id}/{replica.replica_id} turns {new_state.value}"
                + (f": {error}" if error else "."),
                level="info" if new_state is ReplicaState.READY else "warning",
                pool_id=pool.id,
                replica_id=replica.replica_id,
                engine=pool.config.engine.value,
                engine_version=replica.engine_version,
                previous=previous.value,
                last_error=error,
                simulated=pool.simulated,
                snapshot_version=self.snapshot_version,
            )
            self._notify(pool.id)

    # -- launched engines (driven by the lifecycle) --------------------------------------------

    async def evaluate(
        self, pool: PoolRuntime, replica: Replica, serving: PoolConfig | None = None
    ) -> None:
        await self._evaluate(pool, replica, serving)

    def rebound(self) -> None:
        """A launched replica's adapter was (re)bound to a new engine process (ORCH-3410)."""
        self._bump()

    def _on_engine_fault(self, pool_id: str, replica_id: str, error: WorkerError) -> None:
        """A stream broke, or the engine refused the connection: the replica stops taking new
        work until its next probe passes, so the next queued task does not follow the failed
        one to an engine that may be gone. It stays Ready (tasks are still admitted and wait in
        the queue), shown to placement with no free slot. Launched engines are watched by their
        lifecycle instead."""
        if not isinstance(error, WorkerReset | EngineUnreachable):
            return
        pool = self.pools.get(pool_id)
        replica = (
            next((r for r in pool.replicas if r.replica_id == replica_id), None) if pool else None
        )
        if pool is None or replica is None or replica.process is not None:
            return
        if replica.state is not ReplicaState.READY or replica.held:
            return
        replica.held = True
        self._bump()
        narrate(
            "pool-manager",
            "stale",
            pool_id,
            f"Holds replica {pool_id}/{replica_id} until its next probe: {error.message}",
            level="warning",
            pool_id=pool_id,
            replica_id=replica_id,
            error_kind=error.kind.value,
            snapshot_version=self.snapshot_version,
        )

    def lost(
        self,
        pool: PoolRuntime,
        replica: Replica,
        error: str,
        engine_ensured: bool,
        model_present: bool,
    ) -> None:
        """A launched replica's engine is gone or could not start: Unready, with why."""
        gates = Gates(model_present=model_present, engine_ensured=engine_ensured, healthy=False)
        self.publish(pool, replica, gates, error)
        if pool.stopped:
            # The replica was Unready already; the dispatcher still has to hear that nothing
            # will turn Ready, so that tasks waiting for it are told.
            self._notify(pool.id)

    def switch(
        self,
        pool: PoolRuntime,
        config: PoolConfig,
        old: list[Replica],
        fresh: list[Replica],
        *,
        retire: Callable[[PoolRuntime, Replica], None],
    ) -> None:
        """Atomically make ``fresh`` (serving ``config``) the pool's placeable replicas.

        The old replicas stay listed (their leases are still released through the pool) but
        never Ready again; ``forget`` removes them once their streams ended.
        """
        for replica in old:
            retire(pool, replica)
            replica.state = ReplicaState.UNREADY
            replica.last_error = f"retiring: the pool now serves {config.model}"
        pool.replicas = [*old, *fresh]
        pool.config = config
        if self.models is not None:
            self.models.rebind(config)
        pool.draining = False
        self._bump()
        self._metrics.pool_ready.labels(pool.id).set(1 if pool.ready else 0)
        narrate(
            "pool-manager",
            "reload",
            pool.id,
            f"Pool {pool.id} switches to {config.model} on replicas "
            f"{', '.join(r.replica_id for r in fresh)}.",
            pool_id=pool.id,
            model_id=config.model,
            snapshot_version=self.snapshot_version,
        )
        self._notify(pool.id)

    def forget(self, pool: PoolRuntime, old: list[Replica]) -> None:
        """Drop replicas a reload replaced (their engines stopped), and their gauges: left
        behind, they would stay frozen at their last values."""
        gone = {id(r) for r in old}
        pool.replicas = [r for r in pool.replicas if id(r) not in gone]
        for replica in old:
            self._drop_kv_gauge(replica)
            for listener in self._forget_listeners:
                listener(pool.id, replica.replica_id)
        self._bump()
        self._notify(pool.id)

    def _apply_capabilities(
        self, pool: PoolRuntime, replica: Replica, engine_version: str, ctx_max: int | None
    ) -> None:
        replica.ctx_max = ctx_max or UNKNOWN_CTX
        if engine_version != replica.engine_version or replica.metrics is None:
            if engine_version != replica.engine_version:
                self._bump()
            # The old version's series would otherwise stay frozen at its last value.
            self._drop_kv_gauge(replica)
            replica.engine_version = engine_version
            replica.metrics = self._metrics.bind_replica(
                pool.config.engine.value, engine_version, pool.id, replica.replica_id
            )

    def _drop_kv_gauge(self, replica: Replica) -> None:
        if replica.kv_gauge is not None and replica.metrics is not None:
            self._metrics.kv_cache_usage_ratio.remove(*replica.metrics.labels)
            replica.kv_gauge = None

    def _set_kv_usage(self, replica: Replica, ratio: float | None) -> None:
        """Publish the engine's KV cache use; engines that cannot report it stay unset."""
        if ratio is None or replica.metrics is None:
            return
        if replica.kv_gauge is None:
            replica.kv_gauge = self._metrics.kv_cache_usage_ratio.labels(*replica.metrics.labels)
        replica.kv_gauge.set(min(1.0, max(0.0, ratio)))

    # -- leases (ORCH-3502/3503) -------------------------------------------------------------

    def allocate_lease(self, pool_id: str, replica_id: str) -> Replica:
        pool = self.pools[pool_id]
        replica = next(r for r in pool.replicas if r.replica_id == replica_id)
        replica.active += 1
        self._metrics.active_leases.labels(pool_id).set(pool.active_leases)
        return replica

    def stream_progress(self, replica: Replica) -> None:
        """A stream on ``replica`` just delivered tokens: count it as a heartbeat.

        An engine busy serving can answer its health endpoint slower than the stale window;
        tokens arriving prove it alive, so it stays placeable. Only a probe can turn a replica
        Ready or Unready; callers throttle this (once per metrics interval per stream).
        """
        if replica.state is not ReplicaState.READY:
            return
        replica.last_heartbeat = self._clock()
        if replica.stale and not self._host_stale(replica):
            replica.stale = False
            self._bump()
            self._notify(replica.pool_id)

    def release_lease(self, pool_id: str, replica_id: str) -> None:
        pool = self.pools[pool_id]
        replica = next((r for r in pool.replicas if r.replica_id == replica_id), None)
        if replica is not None:  # None: a reload already retired it
            replica.active = max(0, replica.active - 1)
        self._metrics.active_leases.labels(pool_id).set(pool.active_leases)
        self._notify(pool_id)

    def get_active_leases(self, pool_id: str) -> int:
        pool = self.pools.get(pool_id)
        return pool.active_leases if pool else 0

    # -- snapshots for placement -------------------------------------------------------------

    def _vram_on(self, pool: PoolRuntime, host: str | None) -> tuple[int, int]:
        """Total and free VRAM of the pool's devices on ``host``."""
        gpus = self._devices_on(pool, host)
        return sum(g.vram_total_bytes for g in gpus), sum(g.vram_free_bytes for g in gpus)

    def _free_vram(self, pool: PoolRuntime) -> tuple[int, int]:
        """The pool's VRAM as placement's filter sees it: on the host with the most free, where
        a task that fits anywhere in the pool fits (each replica is weighed by its own host's)."""
        return max(
            (self._vram_on(pool, host) for host in self._hosts_of(pool)),
            key=lambda vram: vram[1],
        )

    def replica_views(self, pool_id: str, perf: PerfOf | None = None) -> list[ReplicaView]:
        """Each replica as placement sees it; ``perf`` (replica id -> measured tokens/s and
        first-token ms) fills the perf fields, which are unset without it."""
        pool = self.pools[pool_id]
        cfg = pool.config
        free_on: dict[str | None, int] = {}
        views = []
        for r in pool.replicas:
            tokens_per_s, first_token_ms = perf(r.replica_id) if perf else (None, None)
            host = self.host_of(r)
            free = free_on.get(host)
            if free is None:
                free = free_on[host] = self._vram_on(pool, host)[1]
            views.append(
                ReplicaView(
                    replica_id=r.replica_id,
                    pool_id=pool.id,
                    engine=cfg.engine,
                    engine_version=r.engine_version,
                    free_vram=free,
                    active_slots=r.slots_total if r.held else r.active,
                    slots_total=r.slots_total,
                    ctx_max_supported=min(r.ctx_max, cfg.ctx or UNKNOWN_CTX),
                    ready=self.fresh(r),
                    draining=pool.draining,
                    sampler_profile_version=cfg.sampler_profile_version,
                    perf_tokens_per_s=tokens_per_s,
                    first_token_ms=first_token_ms,
                    host=host,
                )
            )
        return views

    def snapshot(
        self,
        pool_id: str,
        queued: int = 0,
        *,
        replicas: tuple[ReplicaView, ...] | None = None,
        quant: str | None = None,
    ) -> PoolSnapshot:
        """The pool as placement sees it. With ``replicas`` (views with measured perf) the
        pool's perf is their mean; without, the mean of the engines' own perf hints."""
        pool = self.pools[pool_id]
        total, free = self._free_vram(pool)
        if replicas is None:
            perf = [r.perf_tokens_per_s for r in pool.replicas if r.perf_tokens_per_s]
        else:
            perf = [v.perf_tokens_per_s for v in replicas if v.perf_tokens_per_s]
        first = [r.first_token_ms for r in pool.replicas if r.first_token_ms]
        return PoolSnapshot(
            id=pool.id,
            engine=pool.config.engine,
            model_id=pool.config.model,
            slots_total=pool.slots_total,
            slots_free=pool.slots_total - pool.active_leases,
            vram_total_bytes=total,
            vram_free_bytes=free,
            ready=pool.ready,
            draining=pool.draining,
            ctx_max_supported=pool.ctx_max,
            queued=queued,
            device_mask=pool.devices,
            engine_version=pool.engine_version,
            sampler_profile_version=pool.config.sampler_profile_version,
            perf_tokens_per_s=sum(perf) / len(perf) if perf else None,
            first_token_ms=sum(first) / len(first) if first else None,
            quant=quant or (self.models.quant(pool_id) if self.models else None),
            replicas=replicas or (),
            workloads=tuple(pool.config.supported_workloads),
        )
