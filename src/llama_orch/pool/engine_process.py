"""Supervision of launched engines: one process per replica, kept alive under backoff.

A ``ReplicaEngine`` runs one loop per replica of a pool whose engine llama-orch launches
(binary, source, package and container modes):

1. ensure the engine (once per pool, shared by its replicas) and locate the model: the
   engine and model gates;
2. launch the process on a free port with the replica's device mask, bind the adapter to it;
3. probe health quickly until Ready (the health gate), then at the pool's probe cadence;
4. when the process exits, or stays unhealthy for ``hang_after_failed_probes`` probes (a hang),
   or never turns healthy within ``startup_timeout_ms``: kill its process group (its open
   streams break at once and their tasks end with a retriable error), mark the replica Unready
   (queued tasks stay queued), wait an exponential, jittered, bounded backoff, and go to 1.

A restart-storm breaker stops the loop after ``restart_storm.failures`` failures within
``restart_storm.window_s``: the replica stays Unready with ``last_error`` saying so, the
``pool_restart_storm`` gauge is 1, and only a reload (or a restart of llama-orch) tries again.

A replica of a cluster pool that finds no live host with its GPUs has not failed: the cluster
is short of a host. It is not counted toward the breaker (nor as a restart); it waits longer
instead, from the pool's longest backoff, doubling up to ``NO_HOST_MAX_WAIT_S``, and tries
again until a host is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from llama_orch.catalog.refs import FileRef, ModelRef, looks_like_ref, parse_ref, ref_id
from llama_orch.clock import SystemClock
from llama_orch.config import EnginesConfig, PoolConfig
from llama_orch.core.clock import Clock
from llama_orch.errors import DigestMismatch, InvalidModelRef
from llama_orch.observability.metrics import RESTART_REASONS, Metrics
from llama_orch.observability.narration import narrate
from llama_orch.pool.launch import (
    EngineHandle,
    ExitKind,
    HostInventories,
    Launcher,
    LaunchError,
    LaunchSpec,
    NoLiveHost,
    free_port,
)
from llama_orch.provisioners.engine import (
    ENGINES,
    PreparedEngine,
    ProvisionContext,
    ProvisionError,
    prepare,
    replica_command,
)
from llama_orch.provisioners.pool_models import PoolModels
from llama_orch.provisioners.progress import PullState
from llama_orch.supervisor import Supervisor
from llama_orch.vocab import ProvisioningMode

#: Provisioning modes whose engines llama-orch launches and supervises.
LAUNCHED_MODES = frozenset(
    {
        ProvisioningMode.BINARY,
        ProvisioningMode.SOURCE,
        ProvisioningMode.PACKAGE,
        ProvisioningMode.CONTAINER,
    }
)
#: Probe cadence while an engine starts: cold start to Ready is measured in these steps.
STARTUP_POLL_S = 0.05
#: The longest one start-up probe of an engine's health endpoint may take.
STARTUP_PROBE_S = 2.0


async def _loaded(client: httpx.AsyncClient, url: str) -> bool:
    """Whether the engine's own health endpoint answers 200 (listening and model loaded).

    Asked directly while an engine starts, so that refusals and "loading" answers (a container
    runtime publishes the port long before the engine inside listens) never count against the
    adapter's circuit breaker. The status says it all: the body is never read (an engine may
    send one without end), and the whole exchange is bounded in time (httpx bounds each read
    only, so an answer that drips would hold the start-up timeout off for ever).
    """
    try:
        async with asyncio.timeout(STARTUP_PROBE_S), client.stream("GET", url) as response:
            return response.status_code == 200
    except (httpx.HTTPError, TimeoutError):
        return False


def is_launched(cfg: PoolConfig) -> bool:
    return cfg.provisioning is not None and cfg.provisioning.mode in LAUNCHED_MODES


#: Why a life ended when the model is still being pulled (not a restart reason).
MODEL_PENDING = "model_pending"
#: Why a life ended when no cluster host could take the replica (not a restart reason).
NO_LIVE_HOST = "no_live_host"
#: The longest wait between launches of a replica that finds no live host.
NO_HOST_MAX_WAIT_S = 120.0


class ModelMissing(Exception):
    """The pool's model is not present locally (the model gate)."""


class ModelChanged(ModelMissing):
    """The pool's model is in the catalog, but its file is no longer the one registered (the
    message says why and what to do; ``error`` is the typed error)."""

    def __init__(self, error: DigestMismatch) -> None:
        super().__init__(f"{error.message}; {error.hint}")
        self.error = error


class ModelPending(ModelMissing):
    """The pool's model is being pulled into the catalog: the engine waits for it, which is not
    an engine failure (no restart is counted, the storm breaker does not see it)."""


ModelLocator = Callable[[PoolConfig], str]
#: Raises ModelChanged when the pool's model files are not those the catalog hashed; may read
#: them whole (run it in a thread).
ModelConfirmer = Callable[[PoolConfig], None]


def local_model_locator(base_dir: Path) -> ModelLocator:
    """Models given as local paths (``file:`` or plain, relative to ``base_dir``).

    Other refs (``hf:``, ``https://``, ...) are staged by the model provisioner; until it has
    placed them in the catalog, the model gate stays closed with that advice.
    """

    def locate(cfg: PoolConfig) -> str:
        ref = cfg.model
        scheme = urlsplit(ref).scheme
        if scheme and scheme != "file" and len(scheme) > 1:
            raise ModelMissing(
                f"model {ref} is not staged locally; fetch it into the model catalog first "
                "(or give a local path)"
            )
        try:
            if scheme == "file":
                path = Path(unquote(urlsplit(ref).path))
            else:
                path = Path(ref).expanduser()
                if not path.is_absolute():
                    path = base_dir / path
            exists = path.exists()
        except (OSError, RuntimeError) as exc:
            # A name longer than the system allows, the home folder of an unknown user.
            shown = ref if len(ref) <= 200 else f"{ref[:200]}... ({len(ref)} characters)"
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ModelMissing(f"model file {shown} cannot be looked up: {why}") from exc
        if not exists:
            raise ModelMissing(f"model file {path} does not exist")
        return str(path)

    return locate


def catalog_model_locator(models: PoolModels, base_dir: Path) -> ModelLocator:
    """Models from the catalog where a pool names a remote ref (``hf:``, ``https://``, ``s3://``,
    ``oci://``); local paths as ``local_model_locator`` finds them.

    A remote model not yet in the catalog is pending while its pull runs (the pool manager
    starts it at start-up where the network policy allows), and missing otherwise.
    """
    local = local_model_locator(base_dir)

    def locate(cfg: PoolConfig) -> str:
        ref = remote_ref(cfg.model, base_dir)
        if ref is None:
            return local(cfg)
        provisioner = models.provisioner
        resolved = provisioner.store.locate(ref)
        if resolved is not None:
            return _model_file(Path(resolved.local_path))
        model_id = ref_id(ref)
        progress = provisioner.progress.get(model_id)
        if progress is not None and progress.state is PullState.RUNNING:
            raise ModelPending(f"model {model_id} is being pulled into the catalog")
        failure = ""
        if progress is not None and progress.error:
            failure = f" (last pull failed: {progress.error.get('message')})"
        raise ModelMissing(
            f"model {model_id} is not in the catalog{failure}; run `llorch models pull "
            f"{model_id}` (or POST /v1/catalog/models)"
        )

    return locate


def catalog_model_confirmer(models: PoolModels, base_dir: Path) -> ModelConfirmer:
    """Before a launch: the files of the pool's model in the catalog (a local model or one the
    catalog fetched) are still those it hashed; ModelChanged when they are not. A model the
    catalog does not hold is the locator's to report."""

    def confirm(cfg: PoolConfig) -> None:
        ref = remote_ref(cfg.model, base_dir)
        if ref is None:
            model_id = models.registered_local(cfg)
        else:
            resolved = models.provisioner.store.locate(ref)
            model_id = resolved.id if resolved is not None else None
        if model_id is None:
            return
        try:
            models.provisioner.confirm(model_id)
        except DigestMismatch as exc:
            raise ModelChanged(exc) from exc

    return confirm


def remote_ref(model: str, base_dir: Path) -> ModelRef | None:
    """The ref of a model the catalog fetches; None for local paths and plain names."""
    if not looks_like_ref(model):
        return None
    try:
        ref = parse_ref(model, base_dir=str(base_dir))
    except InvalidModelRef:
        return None
    return None if isinstance(ref, FileRef) else ref


def _model_file(path: Path) -> str:
    """A directory entry holding exactly one GGUF file is that file (what llama.cpp loads);
    other directories are passed as they are (vLLM and TGI load a directory)."""
    if path.is_dir():
        ggufs = sorted(path.rglob("*.gguf"))
        if len(ggufs) == 1:
            return str(ggufs[0])
    return str(path)


@dataclass(frozen=True, slots=True)
class Supervision:
    """What the pool manager needs to launch engines (wired by the composition root)."""

    launcher: Launcher
    provision: ProvisionContext
    engines: EnginesConfig
    locate_model: ModelLocator
    #: None: models are launched as the locator finds them, unchecked.
    confirm_model: ModelConfirmer | None = None
    rng: random.Random = field(default_factory=random.Random)
    #: Picks each launch's port (a port taken meanwhile makes the engine exit; it restarts).
    allocate_port: Callable[[], int] = free_port
    #: Total VRAM of a device mask in bytes (None: unknown, no fit check).
    vram_of: Callable[[tuple[int, ...]], int] | None = None
    #: The cluster hosts' inventories (None: every engine runs on this machine).
    hosts: HostInventories | None = None
    #: Times the storm window and the backoff waits (a manual clock in tests).
    clock: Clock = field(default_factory=SystemClock)


@dataclass(slots=True)
class ProcessState:
    """One replica's engine process as the supervisor sees it (health shows it)."""

    prepared: PreparedEngine | None = None
    model_path: str | None = None
    endpoint: str | None = None
    pid: int | None = None
    running: bool = False
    restarts: int = 0
    backoff_ms: int = 0
    last_exit: str | None = None
    storm: bool = False
    log_path: str | None = None
    #: The cluster host the engine runs on (None: this machine).
    host: str | None = None
    #: How the last engine ended: exited, actor_died or node_lost.
    exit_kind: str | None = None
    #: Monotonic times of recent failures (the storm window).
    failures: deque[float] = field(default_factory=deque)

    def as_dict(self) -> dict[str, object]:
        prepared = self.prepared
        return {
            "pid": self.pid,
            "endpoint": self.endpoint,
            "running": self.running,
            "restarts": self.restarts,
            "backoff_ms": self.backoff_ms,
            "last_exit": self.last_exit,
            "restart_storm": self.storm,
            "log_path": self.log_path,
            "host": self.host,
            "exit_kind": self.exit_kind,
            "engine_version": prepared.engine_version if prepared else None,
            "engine_digest": prepared.engine_digest if prepared else None,
            "provisioning_mode": prepared.provisioning_mode if prepared else None,
        }


class EngineCache:
    """``ensure`` once per pool config, shared by its replicas; failures are retried."""

    def __init__(self, ctx: ProvisionContext) -> None:
        self._ctx = ctx
        self._prepared: dict[tuple[str, str], PreparedEngine] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def prepared(self, cfg: PoolConfig) -> PreparedEngine:
        key = (cfg.id, cfg.model_dump_json(include={"engine", "provisioning"}))
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = self._prepared.get(key)
            if found is None:
                started = time.monotonic()
                found = await prepare(cfg, self._ctx)
                self._prepared[key] = found
                narrate(
                    "engine-provisioner",
                    "ensure",
                    cfg.id,
                    f"Prepares {found.engine} {found.engine_version} for pool {cfg.id} "
                    f"({found.provisioning_mode}).",
                    pool_id=cfg.id,
                    engine=found.engine,
                    engine_version=found.engine_version,
                    duration_ms=int((time.monotonic() - started) * 1000),
                    simulated=found.simulated,
                    **{
                        k: v
                        for k, v in found.summary().items()
                        if k not in ("engine", "engine_version", "simulated")
                    },
                )
                for warning in found.warnings:
                    narrate("engine-provisioner", "warning", cfg.id, warning, level="warning")
            return found


#: (pool, replica, endpoint) -> None: bind the replica's adapter to its engine.
BindFn = Callable[[PoolConfig, str, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    #: All three gates pass: the replica is Ready.
    ready: bool
    #: The engine itself answered healthy, whatever the other gates say (a Retired model
    #: closes the catalog gate of an engine that runs fine).
    engine_healthy: bool


#: Re-evaluate the replica's gates (one health probe).
ProbeFn = Callable[[], Awaitable[ProbeResult]]
#: Publish a gate failure or a lost engine: (error, engine_ensured, model_present).
LostFn = Callable[[str, bool, bool], None]


class ReplicaEngine:
    def __init__(
        self,
        cfg: PoolConfig,
        replica_id: str,
        devices: tuple[int, ...],
        state: ProcessState,
        supervision: Supervision,
        engines: EngineCache,
        metrics: Metrics,
        *,
        bind: BindFn,
        probe: ProbeFn,
        lost: LostFn,
        probe_interval_s: float,
    ) -> None:
        self.cfg = cfg
        self.replica_id = replica_id
        self.devices = devices
        self.state = state
        self._sup = supervision
        self._engines = engines
        self._metrics = metrics
        self._bind = bind
        self._probe = probe
        self._lost = lost
        self._probe_interval_s = probe_interval_s
        self.handle: EngineHandle | None = None
        #: Set once the replica was first Ready (a reload waits on it).
        self.ready = asyncio.Event()
        #: The current engine process reached Ready (a later exit is not a failed preload).
        self._life_ready = False
        #: Set when a reload replaced this replica: serve what runs, stop probing, never restart.
        self.retiring = False
        #: Launches in a row that found no live host (reset by a launch that found one).
        self._host_waits = 0
        #: Ends the current wait for a live host early (None: not waiting for one).
        self._host_wake: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._backoff_gauge = metrics.pool_restart_backoff_seconds.labels(cfg.id, replica_id)
        self._storm_gauge = metrics.pool_restart_storm.labels(cfg.id, replica_id)

    def start(self, background: Supervisor) -> None:
        self._storm_gauge.set(0)
        self._task = background.owned(self._run(), name=f"engine-{self.cfg.id}-{self.replica_id}")

    async def stop(self) -> None:
        """Stop supervising and the engine: SIGTERM, wait, SIGKILL; never restart it."""
        self.retiring = True
        handle = self.handle
        if handle is not None:
            code = await handle.stop(self._sup.engines.stop_timeout_ms / 1000)
            self.state.last_exit = f"stopped (status {code})"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.state.running = False
        self._backoff_gauge.set(0)

    @property
    def done(self) -> bool:
        """The loop ended: the storm breaker opened (or it was stopped)."""
        return self._task is None or self._task.done()

    async def _run(self) -> None:
        while True:
            try:
                reason = await self._one_life()
            except Exception as exc:
                # A bug must not end supervision silently: it counts as a failure and backs off.
                reason = "supervisor_error"
                self.state.last_exit = f"supervisor error: {type(exc).__name__}: {exc}"
                narrate(
                    "pool-manager",
                    "supervisor-error",
                    self.cfg.id,
                    f"Supervision of {self.cfg.id}/{self.replica_id} failed: {exc}",
                    level="error",
                    pool_id=self.cfg.id,
                    replica_id=self.replica_id,
                    error_kind=type(exc).__name__,
                )
                self._lost(self.state.last_exit, False, self.state.model_path is not None)
            if reason == MODEL_PENDING and not self.retiring:
                await asyncio.sleep(self._probe_interval_s)
                continue
            if reason == NO_LIVE_HOST and not self.retiring:
                self._host_waits += 1
                await self._pause(self._host_wait(), host_wait=True)
                continue
            if self.retiring or not self._failed(reason):
                return
            await self._pause(self._backoff())

    def host_back(self) -> None:
        """A cluster host answered again (or joined): a launch waiting for a live host tries
        now, and its waits start over from the shortest, instead of sleeping out a wait that
        may have grown to minutes while the hosts were away."""
        wake = self._host_wake
        if wake is not None:
            self._host_waits = 0
            wake()

    async def _pause(self, delay: float, *, host_wait: bool = False) -> None:
        """Wait ``delay`` seconds on the supervision clock, shown as the replica's backoff;
        a ``host_wait`` also ends when a host comes back (``host_back``)."""
        self.state.backoff_ms = int(delay * 1000)
        self._backoff_gauge.set(delay)
        clock = self._sup.clock
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        timer = clock.call_at(clock.now() + delay, wake)
        if host_wait:
            self._host_wake = wake
        try:
            await woken
        finally:
            self._host_wake = None
            timer.cancel()
            self.state.backoff_ms = 0
            self._backoff_gauge.set(0)

    async def _one_life(self) -> str:
        """Prepare, launch and watch the engine once; why it ended (a restart reason)."""
        cfg, state = self.cfg, self.state
        self._life_ready = False
        try:
            state.prepared = await self._engines.prepared(cfg)
        except ProvisionError as exc:
            self._fail(f"engine not ensured: {exc}", False, state.model_path is not None)
            return "provision_failed"
        ended = await self._find_model(cfg)
        if ended is not None:
            return ended
        assert state.model_path is not None
        too_big = self._misfit(state.model_path)
        if too_big is not None:
            self._fail(too_big, True, False)
            return "model_too_large"
        if state.prepared.simulated:
            narrate(
                "pool-manager",
                "simulated",
                cfg.id,
                f"Launches {cfg.id}/{self.replica_id} on a simulated GPU inventory: the engine "
                "runs without real GPUs and everything it serves is labelled simulated.",
                level="warning",
                pool_id=cfg.id,
                replica_id=self.replica_id,
            )
        try:
            handle = await self._launch(state.prepared, state.model_path)
        except NoLiveHost as exc:
            self._lost(f"waiting for a cluster host: {exc}", True, True)
            return NO_LIVE_HOST
        except (LaunchError, ProvisionError) as exc:
            narrate(
                "pool-manager",
                "launch-failed",
                cfg.id,
                f"Cannot launch {cfg.id}/{self.replica_id}: {exc}",
                level="warning",
                pool_id=cfg.id,
                replica_id=self.replica_id,
            )
            self._fail(f"launch failed: {exc}", True, True)
            return "launch_failed"
        self.handle = handle
        self._host_waits = 0
        state.pid, state.endpoint, state.running = handle.pid, handle.endpoint, True
        state.log_path = str(handle.log_path) if handle.log_path else None
        state.host = handle.host
        try:
            await self._bind(cfg, self.replica_id, handle.endpoint)
            reason = await self._watch(handle)
        finally:
            if handle.returncode is None:
                await handle.kill()
            state.running = False
            state.pid = None
            self.handle = None
        code = handle.returncode
        tail = handle.log_tail(3).splitlines()
        last = f"; last log line: {tail[-1][:200]}" if tail else ""
        kind = handle.exit_kind
        state.exit_kind = kind.value if kind is not None else None
        if kind is not None and kind is not ExitKind.EXITED:
            # The process's owner or its host went away, not the engine itself.
            reason, last = kind.value, f" on host {handle.host}{last}"
        elif reason == "never_ready":
            # Most often the engine listens elsewhere (a port or host flag of its own) or is
            # still loading: say where it was asked, and for how long.
            kind_of = ENGINES.get(cfg.engine.value)
            url = handle.endpoint + (kind_of.health_path if kind_of else "/health")
            timeout_ms = self._sup.engines.startup_timeout_ms
            last = (
                f"; {url} did not answer 200 within engines.startup_timeout_ms ({timeout_ms} ms)"
                + last
            )
        state.last_exit = f"{reason} (status {code}){last}"
        self._lost(f"engine {reason} (status {code}){last}", True, True)
        return reason

    async def _find_model(self, cfg: PoolConfig) -> str | None:
        """Set the state's model path to what the engine is to load; else why the life ends."""
        try:
            path = self._sup.locate_model(cfg)
            if self._sup.confirm_model is not None:
                # In a thread: a model file that changed since it was hashed is hashed again.
                await asyncio.to_thread(self._sup.confirm_model, cfg)
            self.state.model_path = path
        except ModelPending as exc:
            self._lost(f"model not present yet: {exc}", True, False)
            return MODEL_PENDING
        except ModelChanged as exc:
            self._fail(f"model refused: {exc}", True, False)
            return "model_changed"
        except ModelMissing as exc:
            self._fail(f"model not present: {exc}", True, False)
            return "model_missing"
        return None

    def _fail(self, error: str, engine_ensured: bool, model_present: bool) -> None:
        """A life that ended before an engine ran: kept as the last exit, which the storm
        breaker's message quotes (it replaces the replica's last error)."""
        self.state.last_exit = error
        self._lost(error, engine_ensured, model_present)

    def _misfit(self, model_path: str) -> str | None:
        """Why the model cannot fit the mask's VRAM, if its weights alone exceed it (ORCH-3003).

        A floor, not an estimate: the KV cache and activations need more on top.
        """
        if self._sup.vram_of is None or self.cfg.cluster_hosts:
            # Another host's VRAM is its agent's to report, not this machine's inventory.
            return None
        have = self._sup.vram_of(self.devices)
        path = Path(model_path)
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        need = sum(p.stat().st_size for p in files)
        if not have or need <= have:
            return None
        return (
            f"model does not fit: {need / 2**30:.2f} GiB of weights exceed the "
            f"{have / 2**30:.2f} GiB of VRAM on GPUs {list(self.devices)}; pick a smaller "
            "quantization or give the pool more devices"
        )

    async def _launch(self, prepared: PreparedEngine, model_path: str) -> EngineHandle:
        port = self._sup.allocate_port()
        name = f"llorch-{self.cfg.id}-{self.replica_id}"
        command = replica_command(
            prepared, self.cfg, model_path=model_path, port=port, devices=self.devices, name=name
        )
        spec = LaunchSpec(
            self.cfg.id,
            self.replica_id,
            command.argv,
            port,
            devices=self.devices,
            env=command.env,
            secrets=command.secrets,
            cleanup=command.cleanup,
            node=self.cfg.host_for(self.replica_id),
        )
        return await self._sup.launcher.launch(spec)

    async def _watch(self, handle: EngineHandle) -> str:  # noqa: C901 - one watch loop per engine life
        """Until the engine exits, hangs or never turns healthy; which of the three."""
        exited = asyncio.ensure_future(handle.wait())
        kind = ENGINES.get(self.cfg.engine.value)
        health_url = handle.endpoint + (kind.health_path if kind else "/health")
        startup = httpx.AsyncClient(timeout=1.0, trust_env=False)
        started = time.monotonic()
        startup_s = self._sup.engines.startup_timeout_ms / 1000
        hang_after = self._sup.engines.hang_after_failed_probes
        ready_once = False
        #: The engine answered healthy at the last probe (its start-up is over).
        answered = False
        failed = 0
        try:
            while True:
                if self.retiring:
                    # A reload's wind-down lasts up to the drain deadline: the engine still
                    # writes, so its log is still kept bounded until it stops.
                    while not (await asyncio.wait({exited}, timeout=self._probe_interval_s))[0]:
                        await handle.tend()
                    return "retired"
                interval = self._probe_interval_s if ready_once or answered else STARTUP_POLL_S
                done, _ = await asyncio.wait({exited}, timeout=interval)
                if done:
                    return "exited"
                await handle.tend()
                if not ready_once and not await _loaded(startup, health_url):
                    if time.monotonic() - started > startup_s:
                        return "never_ready"
                    continue
                probe = asyncio.ensure_future(self._probe())
                either: set[asyncio.Task[Any]] = {probe, exited}
                done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if exited in done:
                    probe.cancel()
                    return "exited"
                result = probe.result()
                answered = result.engine_healthy
                if result.ready and not ready_once:
                    ready_once = True
                    self._on_ready(time.monotonic() - started, adopted=handle.adopted)
                if result.engine_healthy:
                    # Only the engine's own failures count toward a hang or a failed start: a
                    # gate it cannot open (a Retired model) is no reason to kill it.
                    failed = 0
                elif ready_once:
                    failed += 1
                    if failed >= hang_after:
                        return "hung"
                elif time.monotonic() - started > startup_s:
                    return "never_ready"
        finally:
            await startup.aclose()
            if not exited.done():
                exited.cancel()

    def _on_ready(self, elapsed_s: float, *, adopted: bool = False) -> None:
        # An engine taken over from a previous server loaded its model then, not now.
        if not adopted:
            self._metrics.pool_preload_total.labels(self.cfg.id, "success").inc()
        self._life_ready = True
        self.ready.set()
        since = "it was taken over" if adopted else "launch"
        narrate(
            "pool-manager",
            "adopted" if adopted else "preload",
            self.cfg.id,
            f"Replica {self.cfg.id}/{self.replica_id} is Ready {int(elapsed_s * 1000)} ms after "
            f"{since}.",
            pool_id=self.cfg.id,
            replica_id=self.replica_id,
            duration_ms=int(elapsed_s * 1000),
            engine_version=self.state.prepared.engine_version if self.state.prepared else None,
            pid=self.state.pid,
        )

    def _failed(self, reason: str) -> bool:
        """Count one failure; False when the storm breaker opens (stop retrying)."""
        state = self.state
        now = self._sup.clock.now()
        storm = self._sup.engines.restart_storm
        state.failures.append(now)
        while state.failures and now - state.failures[0] > storm.window_s:
            state.failures.popleft()
        if reason in RESTART_REASONS:
            if not self._life_ready:
                self._metrics.pool_preload_total.labels(self.cfg.id, "failure").inc()
            state.restarts += 1
            self._metrics.pool_restarts_total.labels(self.cfg.id, reason).inc()
        if len(state.failures) >= storm.failures:
            state.storm = True
            self._storm_gauge.set(1)
            message = (
                f"restart storm: {len(state.failures)} failures within {storm.window_s} s, the "
                f"last {state.last_exit or reason}; stopped restarting. Fix the cause (see "
                f"{state.log_path or 'the engine log'}) and reload the pool"
            )
            self._lost(message, state.prepared is not None, state.model_path is not None)
            narrate(
                "pool-manager",
                "restart-storm",
                self.cfg.id,
                f"Stops restarting {self.cfg.id}/{self.replica_id}: {message}",
                level="error",
                pool_id=self.cfg.id,
                replica_id=self.replica_id,
                restart_count=state.restarts,
                last_error=message,
            )
            return False
        return True

    def _host_wait(self) -> float:
        """Longer than any restart backoff: from the pool's longest, doubling per launch in a
        row that found no host, capped; with the pool's jitter."""
        backoff = self.cfg.backoff
        delay_s = min(NO_HOST_MAX_WAIT_S, backoff.max_ms / 1000 * 2.0 ** (self._host_waits - 1))
        if backoff.jitter:
            delay_s *= self._sup.rng.uniform(0.5, 1.0)
        narrate(
            "pool-manager",
            "backoff",
            self.cfg.id,
            f"Launches {self.cfg.id}/{self.replica_id} again in {int(delay_s * 1000)} ms, when a "
            "cluster host may be back (not counted as a restart).",
            level="warning",
            pool_id=self.cfg.id,
            replica_id=self.replica_id,
            backoff_ms=int(delay_s * 1000),
            reason=NO_LIVE_HOST,
        )
        return delay_s

    def _backoff(self) -> float:
        """Exponential in the failures of the window, capped, with jitter."""
        backoff = self.cfg.backoff
        attempt = max(0, len(self.state.failures) - 1)
        delay_ms = min(backoff.max_ms, backoff.initial_ms * backoff.factor**attempt)
        if backoff.jitter:
            delay_ms *= self._sup.rng.uniform(0.5, 1.0)
        narrate(
            "pool-manager",
            "backoff",
            self.cfg.id,
            f"Restarts {self.cfg.id}/{self.replica_id} in {int(delay_ms)} ms.",
            pool_id=self.cfg.id,
            replica_id=self.replica_id,
            backoff_ms=int(delay_ms),
            restart_count=self.state.restarts,
        )
        return delay_ms / 1000
