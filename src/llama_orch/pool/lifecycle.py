"""PoolLifecycle: launched replicas, drain and reload of a pool.

- ``start``/``stop``: stop orphans a crashed run left, then one ``ReplicaEngine`` per replica
  of every launched pool; on stop, every engine gets SIGTERM, a grace period, then SIGKILL.
- ``drain(deadline_ms)``: the pool refuses new work at once, its queued tasks end with a
  retriable POOL_UNAVAILABLE, in-flight tasks run until the deadline and are then stopped.
- ``reload(new_model_ref)``: the model must be present; new replica processes start beside the
  old ones and must all turn Ready; then, in one step, placement sees only the new replicas and
  the pool serves the new model; the old ones finish their streams (bounded by the drain
  deadline) and stop. Any failure before the switch stops the new processes and leaves the old
  replicas untouched, serving. A pool whose engine llama-orch does not launch (external, mock)
  keeps its model: its reload probes the same endpoint again (the operator restarted the
  engine) and ends the drain once every replica passes its gates.

What happens to tasks is the dispatcher's business: the caller hands in ``TaskControl``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llama_orch.adapters.host import AdapterHost, BreakerPolicy, RetryPolicy
from llama_orch.config import EnginesConfig, PoolConfig
from llama_orch.contracts.engine import EngineAdapter
from llama_orch.errors import (
    Conflict,
    DigestMismatch,
    InvalidParams,
    WorkerError,
    WorkerReset,
    WorkerUnavailable,
)
from llama_orch.observability.metrics import Metrics
from llama_orch.observability.narration import narrate
from llama_orch.pool.engine_process import (
    EngineCache,
    ModelChanged,
    ModelMissing,
    ProbeResult,
    ProcessState,
    ReplicaEngine,
    Supervision,
    is_launched,
)
from llama_orch.supervisor import Supervisor
from llama_orch.vocab import Engine

if TYPE_CHECKING:
    from llama_orch.pool.manager import PoolManager, PoolRuntime, Replica

#: How long a reload lets the old replicas finish their streams before stopping them.
RELOAD_DRAIN_MS = 30_000
#: How long stopped streams get to unwind and release their slots.
STOP_GRACE_MS = 5_000
#: Cadence of the idle check while draining.
_IDLE_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class TaskControl:
    """How drain and reload end a pool's tasks (implemented by the dispatcher's owner)."""

    #: End every queued task of the pool with a retriable POOL_UNAVAILABLE; how many.
    end_queued: Callable[[str, str], int]
    #: Stop the running tasks of these replicas of the pool (reason ``drain``); how many.
    stop_running: Callable[[str, set[str]], int]


@dataclass(slots=True)
class Operation:
    """The latest drain or reload of a pool, as health shows it."""

    kind: str
    state: str = "running"
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    duration_ms: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "state": self.state,
            "started_ms": self.started_ms,
            "duration_ms": self.duration_ms,
            "error": self.error,
            **self.detail,
        }


class PoolLifecycle:
    def __init__(
        self,
        manager: PoolManager,
        host: AdapterHost,
        adapter_factory: Callable[[PoolConfig, int], EngineAdapter],
        supervision: Supervision | None,
        metrics: Metrics,
        probe_interval_s: float,
        background: Supervisor,
    ) -> None:
        self._manager = manager
        self._host = host
        self._factory = adapter_factory
        self._sup = supervision
        self._metrics = metrics
        self._probe_interval_s = probe_interval_s
        #: Runs the engines' watch loops and the drain and reload jobs (errors are logged).
        self._background = background
        self._engine_cache = EngineCache(supervision.provision) if supervision else None
        self.engines: dict[tuple[str, str], ReplicaEngine] = {}
        #: pool id -> the drain or reload running on it (one at a time: 409 otherwise).
        self.busy: dict[str, Operation] = {}
        #: pool id -> the latest drain or reload, finished or not.
        self.latest: dict[str, Operation] = {}
        self._generation: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self._sup is not None

    def hosts_back(self) -> None:
        """A cluster host answered again or joined: replicas waiting for one launch now."""
        for engine in self.engines.values():
            engine.host_back()

    def reloading_to(self, engine: Engine, model: str) -> str | None:
        """The pool whose running reload brings ``model`` on ``engine``, before it switched
        (from then on the pool serves it), if any."""
        for pool_id, op in self.busy.items():
            pool = self._manager.pools[pool_id]
            if (
                op.kind == "reload"
                and op.detail.get("to_model") == model
                and pool.config.engine is engine
                and pool.config.model != model
            ):
                return pool_id
        return None

    # -- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        launched = [p for p in self._manager.pools.values() if is_launched(p.config)]
        if self._sup is None or not launched:
            return
        await self._sup.launcher.reap_orphans()
        if os.geteuid() == 0:
            narrate(
                "pool-manager",
                "root",
                "engines",
                "Runs engines as root: run llama-orch as a regular user so its engines do not "
                "hold root privileges (rootless podman for containers).",
                level="warning",
            )
        self._host.on_engine_fault(self._on_engine_fault)
        for pool in launched:
            for replica in pool.replicas:
                self._keep_engine(pool, pool.config, replica)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        engines = list(self.engines.values())
        self.engines.clear()
        await asyncio.gather(*(s.stop() for s in engines))
        if self._sup is not None:
            await self._sup.launcher.close()

    def _keep_engine(self, pool: PoolRuntime, cfg: PoolConfig, replica: Replica) -> ReplicaEngine:
        assert self._sup is not None and self._engine_cache is not None
        if replica.process is None:
            replica.process = ProcessState()
        manager = self._manager

        async def bind(cfg: PoolConfig, replica_id: str, endpoint: str) -> None:
            await self._host.unbind(cfg.id, replica_id)
            self._host.bind(
                cfg.id,
                replica_id,
                self._factory(cfg.model_copy(update={"endpoint": endpoint}), 0),
                retry=RetryPolicy.from_config(cfg.http, cfg.backoff),
                breaker=BreakerPolicy.from_config(cfg.circuit_breaker),
            )
            manager.rebound()

        async def probe() -> ProbeResult:
            await manager.evaluate(pool, replica, cfg)
            return ProbeResult(replica.state.value == "ready", replica.gates.healthy)

        def lost(error: str, engine_ensured: bool, model_present: bool) -> None:
            manager.lost(pool, replica, error, engine_ensured, model_present)

        engine = ReplicaEngine(
            cfg,
            replica.replica_id,
            pool.devices,
            replica.process,
            self._sup,
            self._engine_cache,
            self._metrics,
            bind=bind,
            probe=probe,
            lost=lost,
            probe_interval_s=self._probe_interval_s,
        )
        self.engines[(pool.id, replica.replica_id)] = engine
        engine.start(self._background)
        return engine

    def _on_engine_fault(self, pool_id: str, replica_id: str, error: WorkerError) -> None:
        """A broken stream on a launched engine stops placement on it until a probe passes:
        the engine may be dying, and the next queued task must not follow the failed one."""
        if not isinstance(error, WorkerReset | WorkerUnavailable):
            return
        pool = self._manager.pools.get(pool_id)
        replica = (
            next((r for r in pool.replicas if r.replica_id == replica_id), None) if pool else None
        )
        if pool is None or replica is None or replica.process is None:
            return
        if replica.state.value == "ready":
            why = f"engine connection broke ({error.kind.value}); probing"
            self._manager.lost(pool, replica, why, True, True)

    # -- drain -------------------------------------------------------------------------------

    def _claim(self, pool_id: str, kind: str) -> Operation:
        running = self.busy.get(pool_id)
        if running is not None:
            raise Conflict(
                f"pool {pool_id} is already running a {running.kind}; wait for it to finish "
                f"(GET /v1/pools/{pool_id}/health shows its progress)",
                pool_id=pool_id,
            )
        op = self.busy[pool_id] = self.latest[pool_id] = Operation(kind)
        return op

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = self._background.owned(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def retire(
        self,
        pool_id: str,
        why: str,
        deadline_ms: int | None,
        tasks: TaskControl,
        still_retired: Callable[[], Awaitable[bool]],
    ) -> int:
        """The pool's model was retired: its queued tasks end now (none can start until the model
        is active again), its running ones finish, or with ``deadline_ms`` are stopped at that
        deadline unless the model was activated meanwhile. How many queued tasks ended."""
        ended = tasks.end_queued(pool_id, why)
        if deadline_ms is not None:
            pool = self._manager.pools[pool_id]
            self._spawn(
                self._stop_at_deadline(pool, deadline_ms, tasks, still_retired),
                f"retire-{pool_id}",
            )
        return ended

    async def _stop_at_deadline(
        self,
        pool: PoolRuntime,
        deadline_ms: int,
        tasks: TaskControl,
        still_retired: Callable[[], Awaitable[bool]],
    ) -> None:
        ids = {r.replica_id for r in pool.replicas}
        if await self._wait_idle(pool, ids, deadline_ms) or not await still_retired():
            return
        stopped = tasks.stop_running(pool.id, ids)
        narrate(
            "pool-manager",
            "retired",
            pool.id,
            f"Pool {pool.id} stops {stopped} tasks still running at the retire deadline.",
            pool_id=pool.id,
            stopped=stopped,
        )

    def drain(self, pool_id: str, deadline_ms: int, tasks: TaskControl) -> Operation:
        pool = self._manager.pools[pool_id]
        op = self._claim(pool_id, "drain")
        op.detail["deadline_ms"] = deadline_ms
        self._manager.set_draining(pool_id, True)
        self._metrics.drain_events_total.labels(pool_id, "drain").inc()
        op.detail["queued_ended"] = tasks.end_queued(pool_id, f"pool {pool_id} is draining")
        self._spawn(self._finish_drain(pool, op, deadline_ms, tasks), f"drain-{pool_id}")
        return op

    async def _finish_drain(
        self, pool: PoolRuntime, op: Operation, deadline_ms: int, tasks: TaskControl
    ) -> None:
        started = time.monotonic()
        try:
            ids = {r.replica_id for r in pool.replicas}
            idle = await self._wait_idle(pool, ids, deadline_ms)
            op.detail["in_flight_stopped"] = 0 if idle else tasks.stop_running(pool.id, ids)
            op.state = "done"
        finally:
            op.duration_ms = int((time.monotonic() - started) * 1000)
            self.busy.pop(pool.id, None)
        narrate(
            "pool-manager",
            "drained",
            pool.id,
            f"Pool {pool.id} is drained: {op.detail['queued_ended']} queued tasks ended, "
            f"{op.detail['in_flight_stopped']} in-flight tasks stopped at the deadline.",
            pool_id=pool.id,
            duration_ms=op.duration_ms,
        )

    async def _wait_idle(self, pool: PoolRuntime, replica_ids: set[str], deadline_ms: int) -> bool:
        deadline = time.monotonic() + deadline_ms / 1000
        while True:
            if not any(r.active for r in pool.replicas if r.replica_id in replica_ids):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_IDLE_POLL_S)

    # -- reload ------------------------------------------------------------------------------

    async def reload(
        self,
        pool_id: str,
        new_model_ref: str,
        tasks: TaskControl,
        within: tuple[str, ...] | None = None,
    ) -> Operation:
        """``within``: the catalog.local_roots folders a local new model must lie in when it
        is opened to be registered (a client's reload); None: no bound (the operator's)."""
        pool = self._manager.pools[pool_id]
        if self._sup is None or not is_launched(pool.config):
            return self._reprobe(pool, new_model_ref)
        new_cfg = _with_model(pool.config, new_model_ref)
        if self._sup.confirm_model is not None:
            try:
                # In a thread: a model file that changed since it was hashed is hashed again.
                await asyncio.to_thread(self._sup.confirm_model, new_cfg)
            except ModelChanged as exc:
                raise DigestMismatch(
                    f"cannot reload pool {pool_id}: {exc.error.message}",
                    hint=exc.error.hint,
                    pool_id=pool_id,
                ) from exc
        # From here to the reload's start nothing awaits: a delete cannot come in between.
        try:
            self._sup.locate_model(new_cfg)
        except ModelMissing as exc:
            raise InvalidParams(f"cannot reload pool {pool_id}: {exc}", pool_id=pool_id) from exc
        if self._manager.models is not None:
            self._manager.models.require_active(new_cfg)
        op = self._claim(pool_id, "reload")
        op.detail.update({"from_model": pool.config.model, "to_model": new_model_ref})
        if self._manager.models is not None:
            # The catalog keeps the new model until the reload ended (a DELETE is a 409).
            self._manager.models.begin_reload(new_cfg)
        self._spawn(self._reload(pool, new_cfg, op, tasks, within), f"reload-{pool_id}")
        return op

    def _reprobe(self, pool: PoolRuntime, model_ref: str) -> Operation:
        """Reload a pool whose engine llama-orch does not launch (external, or the in-process
        mock): its operator restarted the engine behind the same endpoint, so the reload probes
        it again and the pool turns Ready, and stops draining, once every replica passes the
        three gates, as at start-up. The model cannot change: llama-orch cannot make an engine
        it does not run load another one."""
        if model_ref != pool.config.model:
            if pool.config.provisioning is None:
                how = (
                    "it runs the simulated mock engine in-process; change pools[].model in the "
                    "config and restart llorch serve"
                )
            else:
                how = (
                    f"provisioning mode {pool.config.provisioning.mode.value}; to serve "
                    f"{model_ref!r}, restart that engine with it, change pools[].model in the "
                    "config and restart llorch serve. After restarting the engine with the same "
                    f"model, `llorch pools reload {pool.id}` (new_model_ref "
                    f"{pool.config.model!r}) probes it again"
                )
            raise InvalidParams(
                f"pool {pool.id} serves {pool.config.model!r} from an engine llama-orch does not "
                f"launch, so a reload cannot switch it to {model_ref!r} ({how})",
                pool_id=pool.id,
            )
        op = self._claim(pool.id, "reload")
        op.detail.update({"from_model": model_ref, "to_model": model_ref, "reprobe": True})
        engines = self._sup.engines if self._sup is not None else EnginesConfig()
        timeout_s = engines.startup_timeout_ms / 1000
        self._spawn(self._reprobe_until_ready(pool, op, timeout_s), f"reload-{pool.id}")
        return op

    async def _reprobe_until_ready(
        self, pool: PoolRuntime, op: Operation, timeout_s: float
    ) -> None:
        started = time.monotonic()
        deadline = started + timeout_s
        try:
            while True:
                # Probes of this reload's own, never a Ready state left from before it: the
                # engine behind the endpoint may have gone since the last probe.
                await asyncio.gather(*(self._manager.evaluate(pool, r) for r in pool.replicas))
                failing = next((r for r in pool.replicas if r.state.value != "ready"), None)
                if failing is None:
                    self._manager.set_draining(pool.id, False)
                    op.state = "done"
                    narrate(
                        "pool-manager",
                        "reloaded",
                        pool.id,
                        f"Pool {pool.id}'s engine passes its gates again: it serves "
                        f"{pool.config.model}.",
                        pool_id=pool.id,
                        model_id=pool.config.model,
                    )
                    return
                if time.monotonic() >= deadline:
                    op.state = "failed"
                    op.error = (
                        f"replica {failing.replica_id} did not pass its gates within "
                        f"engines.startup_timeout_ms ({timeout_s * 1000:.0f} ms): "
                        f"{failing.last_error or 'not ready'}; the pool stays "
                        + ("draining" if pool.draining else "unready")
                        + ": check the engine at its endpoint and reload again"
                    )
                    narrate(
                        "pool-manager",
                        "reload-failed",
                        pool.id,
                        f"Reload of {pool.id} fails: {op.error}",
                        level="warning",
                        pool_id=pool.id,
                        last_error=op.error,
                    )
                    return
                await asyncio.sleep(self._probe_interval_s)
        finally:
            op.duration_ms = int((time.monotonic() - started) * 1000)
            self.busy.pop(pool.id, None)

    async def _reload(
        self,
        pool: PoolRuntime,
        new_cfg: PoolConfig,
        op: Operation,
        tasks: TaskControl,
        within: tuple[str, ...] | None,
    ) -> None:
        try:
            await self._reload_steps(pool, new_cfg, op, tasks, within)
        finally:
            if self._manager.models is not None:
                self._manager.models.end_reload(pool.id)

    async def _reload_steps(
        self,
        pool: PoolRuntime,
        new_cfg: PoolConfig,
        op: Operation,
        tasks: TaskControl,
        within: tuple[str, ...] | None,
    ) -> None:
        from llama_orch.pool.manager import Replica

        assert self._sup is not None
        started = time.monotonic()
        generation = self._generation[pool.id] = self._generation.get(pool.id, 0) + 1
        fresh = [
            Replica(pool.id, f"r{i}-g{generation}", pool.devices, new_cfg.slots)
            for i in range(new_cfg.replicas)
        ]
        engines: list[ReplicaEngine] = []
        try:
            models = self._manager.models
            if models is not None:
                # The new replicas' catalog gate is their own model's: a local model is
                # registered (hashed) before they start, so they never wait on it.
                await asyncio.to_thread(models.register_local, new_cfg, within)
            engines = [self._keep_engine(pool, new_cfg, r) for r in fresh]
            await self._all_ready(engines, new_cfg, self._sup.engines.startup_timeout_ms / 1000)
        except Exception as exc:
            await self._discard(pool, engines)
            op.state, op.error = "rolled_back", str(exc)
            op.duration_ms = int((time.monotonic() - started) * 1000)
            self.busy.pop(pool.id, None)
            narrate(
                "pool-manager",
                "reload-failed",
                pool.id,
                f"Reload of {pool.id} fails and rolls back; the old replicas keep serving: {exc}",
                level="warning",
                pool_id=pool.id,
                last_error=str(exc),
            )
            return
        old = list(pool.replicas)
        old_model = pool.config.model
        self._manager.switch(pool, new_cfg, old, fresh, retire=self._retire)
        op.detail["switch_ms"] = int((time.monotonic() - started) * 1000)
        if new_cfg.model != old_model:
            # Tasks still queued were admitted for the old model, which no replica serves any
            # more: placement would never start them, and they would hold up the new model's
            # tasks queued behind them.
            op.detail["queued_ended"] = tasks.end_queued(
                pool.id, f"pool {pool.id} now serves {new_cfg.model}, not {old_model}"
            )
        try:
            self._metrics.drain_events_total.labels(pool.id, "reload").inc()
            ids = {r.replica_id for r in old}
            idle = await self._wait_idle(pool, ids, RELOAD_DRAIN_MS)
            op.detail["in_flight_stopped"] = 0 if idle else tasks.stop_running(pool.id, ids)
            if not idle:  # the stopped streams release their leases as they unwind
                await self._wait_idle(pool, ids, STOP_GRACE_MS)
            await self._discard(
                pool,
                [self.engines[(pool.id, i)] for i in sorted(ids) if (pool.id, i) in self.engines],
            )
            self._manager.forget(pool, old)
            op.state = "done"
        finally:
            op.duration_ms = int((time.monotonic() - started) * 1000)
            self.busy.pop(pool.id, None)

    def _retire(self, pool: PoolRuntime, replica: Replica) -> None:
        engine = self.engines.get((pool.id, replica.replica_id))
        if engine is not None:
            engine.retiring = True

    async def _all_ready(
        self, engines: list[ReplicaEngine], new_cfg: PoolConfig, timeout_s: float
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(s.ready.is_set() for s in engines):
            if self._manager.models is not None:
                # Retired meanwhile: the new replicas would wait out the whole start-up timeout.
                self._manager.models.require_active(new_cfg)
            stopped = [s for s in engines if s.done]
            if stopped:
                raise RuntimeError(
                    f"replica {stopped[0].replica_id} failed to start: "
                    f"{stopped[0].state.last_exit or 'restart storm'}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(f"new replicas not Ready within {timeout_s:.0f} s")
            await asyncio.sleep(_IDLE_POLL_S)

    async def _discard(self, pool: PoolRuntime, engines: list[ReplicaEngine]) -> None:
        for engine in engines:
            self.engines.pop((pool.id, engine.replica_id), None)
        await asyncio.gather(*(s.stop() for s in engines))
        for engine in engines:
            await self._host.unbind(pool.id, engine.replica_id)
            self._metrics.forget_replica_lifecycle(pool.id, engine.replica_id)


def _with_model(cfg: PoolConfig, model_ref: str) -> PoolConfig:
    prov = cfg.provisioning
    if prov is not None and prov.model is not None and prov.model.ref is not None:
        prov = prov.model_copy(update={"model": prov.model.model_copy(update={"ref": model_ref})})
    return cfg.model_copy(update={"model": model_ref, "provisioning": prov})
