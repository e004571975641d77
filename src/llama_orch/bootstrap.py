"""Composition root: Settings -> AppDeps. The only module that wires concrete classes together."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from llama_orch.adapters.host import AdapterHost
from llama_orch.adapters.registry import FACTORIES, AdapterContext, adapter_factory
from llama_orch.artifacts import ArtifactStore, TraceWriter
from llama_orch.catalog import CatalogStore
from llama_orch.catalog.store import default_catalog_root
from llama_orch.clock import SystemClock
from llama_orch.config import Settings
from llama_orch.config._models import EnginesConfig
from llama_orch.core.clock import Clock
from llama_orch.dispatch.admission import Admission
from llama_orch.dispatch.dispatcher import Dispatcher
from llama_orch.dispatch.service import TaskService
from llama_orch.errors import ConfigError, ConfigIssue
from llama_orch.observability.metrics import Metrics
from llama_orch.observability.narration import narrate
from llama_orch.pool.engine_process import (
    Supervision,
    catalog_model_confirmer,
    catalog_model_locator,
    is_launched,
)
from llama_orch.pool.gpus import GpuInventory, nvml_inventory, simulated_inventory
from llama_orch.pool.launch import Launcher, LocalLauncher, RunDirBusy, hold_run_dir
from llama_orch.pool.launch.routing import HostRouting
from llama_orch.pool.manager import PoolManager
from llama_orch.provisioners.engine import FileEngineIndex, ProvisionContext
from llama_orch.provisioners.factory import catalog_root, model_provisioner
from llama_orch.provisioners.pool_models import PoolModels
from llama_orch.server.deps import AppDeps
from llama_orch.supervisor import Supervisor

if TYPE_CHECKING:
    from llama_orch.pool.launch.ray import RayLauncher


def discover_gpus(settings: Settings) -> GpuInventory:
    simulated = settings.config.gpus.simulated
    return simulated_inventory(simulated) if simulated is not None else nvml_inventory()


def check_serveable(settings: Settings, inventory: GpuInventory) -> None:
    """Fail fast, with the fix, when a pool cannot be served here (ORCH-1102: no CPU fallback)."""
    issues = []
    for index, pool in enumerate(settings.config.pools):
        where = f"pools.{index}"
        if pool.cluster_hosts:
            # Its GPUs are the host's (config checks the mask against them); not this machine's.
            continue
        if pool.engine not in FACTORIES:
            issues.append(
                ConfigIssue(
                    f"{where}.engine", f"engine {pool.engine.value} has no adapter in this build"
                )
            )
        if pool.is_gpu_engine and not inventory.gpus:
            issues.append(
                ConfigIssue(
                    where,
                    f"pool {pool.id!r} runs {pool.engine.value}, which needs an NVIDIA GPU; none "
                    f"was found ({inventory.problem}). Install the NVIDIA driver and check "
                    "`nvidia-smi`; for demos and tests declare gpus.simulated. There is no CPU "
                    "fallback.",
                )
            )
        missing = sorted(set(pool.devices or []) - set(inventory.indices))
        if inventory.gpus and missing:
            issues.append(
                ConfigIssue(
                    f"{where}.devices",
                    f"GPUs {missing} do not exist; present: {list(inventory.indices)}",
                )
            )
    if issues:
        raise ConfigError(settings.source, issues)


def check_vram_fit(settings: Settings, inventory: GpuInventory, models: PoolModels) -> None:
    """Refuse to start a pool whose model (already in the catalog) cannot fit its GPUs."""
    issues = []
    for index, pool in enumerate(settings.config.pools):
        if pool.cluster_hosts:
            continue
        devices = tuple(pool.devices) if pool.devices is not None else inventory.indices
        free = {g.index: g.vram_free_bytes for g in inventory.gpus if g.index in devices}
        problem = models.fit_problem(pool.id, free) if models.by_pool[pool.id].gated else None
        if problem is not None:
            issues.append(ConfigIssue(f"pools.{index}.model", problem))
    if issues:
        raise ConfigError(settings.source, issues)


def writable_dir(settings: Settings, key: str, root: Path) -> Path:
    """``root`` (the directory config ``key`` names), created now: one the server cannot write
    stops start-up with its key, rather than failing each request that stores something."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            settings.source,
            [
                ConfigIssue(
                    key,
                    f"cannot write {root}: {exc.strerror or exc}; point it at a directory this "
                    "user can write",
                )
            ],
        ) from exc
    return root


_DEFAULT_RUN_DIR = EnginesConfig().run_dir


def engines_run_dir(settings: Settings) -> Path:
    """``engines.run_dir``; left at its default it follows XDG_CACHE_HOME, as the catalog
    root and the engine index beside it do."""
    run_dir = settings.config.engines.run_dir
    if run_dir == _DEFAULT_RUN_DIR:
        return default_catalog_root(settings.catalog_env).parent / "run"
    return Path(run_dir).expanduser()


def hold_engines_run_dir(settings: Settings) -> int | None:
    """Lock ``engines.run_dir`` for this server when it launches engines (the descriptor);
    another live server using it stops start-up, before it could stop that server's engines."""
    if not any(is_launched(pool) for pool in settings.config.pools):
        return None
    run_dir = engines_run_dir(settings)
    try:
        return hold_run_dir(run_dir)
    except RunDirBusy as exc:
        message = (
            f"another llorch serve (pid {exc.holder or 'unknown'}) runs its engines from "
            f"{run_dir}; stop that server, or give this one its own engines.run_dir"
        )
    except OSError as exc:
        message = f"cannot lock {run_dir}: {exc.strerror or exc}; point it at a directory "
        message += "this user can write"
    raise ConfigError(settings.source, [ConfigIssue("engines.run_dir", message)])


def launcher_of(settings: Settings) -> Launcher:
    """Local processes; with ``hosts``, pools naming a host go through the Ray launcher."""
    local = LocalLauncher(
        engines_run_dir(settings), log_max_bytes=settings.config.engines.log_max_bytes
    )
    cluster = cluster_launcher_of(settings)
    return local if cluster is None else HostRouting(local, cluster)


def cluster_launcher_of(settings: Settings) -> RayLauncher | None:
    """The Ray launcher when a pool names a host; None for a single machine."""
    config = settings.config
    if not any(pool.cluster_hosts for pool in config.pools):
        return None
    # Imported here so that single-host servers never load the cluster runtime.
    from llama_orch.pool.launch.ray import HostSpec, RayLauncher

    hosts = [HostSpec(h.name, tuple(h.gpus), h.simulated_vram_bytes) for h in config.hosts]
    return RayLauncher(
        hosts,
        address=config.cluster.address,
        log_dir=str(engines_run_dir(settings) / "logs"),
        log_max_bytes=config.engines.log_max_bytes,
        placement_timeout_s=config.cluster.placement_timeout_ms / 1000,
        head_exit_timeout_s=config.cluster.head_exit_timeout_ms / 1000,
        head_lost_after_s=config.cluster.head_lost_after_ms / 1000,
        token_file=(
            str(Path(config.cluster.token_file).expanduser()) if config.cluster.token_file else None
        ),
        # Engines of these replicas that survived a server restart are taken over.
        expected=[
            f"{pool.id}-r{i}"
            for pool in config.pools
            if pool.cluster_hosts
            for i in range(pool.replicas)
        ],
    )


def supervision_of(settings: Settings, inventory: GpuInventory, models: PoolModels) -> Supervision:
    """How launched engines are prepared, started and found (SPEC §8, §11)."""
    config = settings.config
    engines = config.engines
    launcher = launcher_of(settings)
    return Supervision(
        launcher=launcher,
        provision=ProvisionContext(
            cache_root=Path(engines.cache_dir).expanduser(),
            # Beside models.json: a default root follows XDG_CACHE_HOME, as the catalog does.
            index=FileEngineIndex(catalog_root(config, settings.catalog_env)),
            network_policy=config.network_policy,
            ca_roots=tuple(config.catalog.trust_policy.ca_roots),
            simulated=inventory.simulated,
            step_idle_timeout_s=engines.provision_idle_timeout_ms / 1000,
        ),
        engines=engines,
        # A remote ref (hf:, https, s3, oci) is the catalog's copy; a path is read where it is.
        locate_model=catalog_model_locator(models, settings.base_dir),
        confirm_model=catalog_model_confirmer(models, settings.base_dir),
        vram_of=lambda devices: sum(
            gpu.vram_total_bytes for i in devices if (gpu := inventory.by_index(i)) is not None
        ),
        hosts=launcher.cluster if isinstance(launcher, HostRouting) else None,
    )


def recover_catalog(store: CatalogStore) -> None:
    """Undo what a crash left in the catalog: a damaged model index is set aside, the files
    of an interrupted delete are removed; each is said in the log."""
    for recovery in store.recover():
        kept = recovery.kept
        if recovery.restored_from is not None:
            done = (
                f"Restores the model index from its copy {recovery.restored_from.name}: every "
                "model registered is kept"
            )
        else:
            done = (
                "Starts an empty model index (its copy could not be read either); the files "
                "under models/ are kept: pull or register those models again"
            )
        narrate(
            "catalog",
            "recover",
            str(kept),
            f"{done}. The damaged index is set aside as {kept}.",
            level="warning",
            last_error=recovery.why,
        )
    if removed := store.empty_trash():
        narrate(
            "catalog",
            "recover",
            str(store.trash_dir),
            f"Removes {removed} leftover{'s' if removed > 1 else ''} of an interrupted model "
            "delete.",
        )


def build_deps(
    settings: Settings,
    *,
    inventory: GpuInventory | None = None,
    probe_interval_s: float = 2.0,
    clock: Clock | None = None,
    supervision: Callable[[Supervision], Supervision] | None = None,
) -> AppDeps:
    """``supervision`` may adjust how engines are launched (tests: port allocation)."""
    inventory = inventory or discover_gpus(settings)
    check_serveable(settings, inventory)
    clock = clock or SystemClock()
    metrics = Metrics()
    writable_dir(settings, "catalog.root", catalog_root(settings.config, settings.catalog_env))
    models = model_provisioner(settings.config, settings.catalog_env, metrics)
    recover_catalog(models.store)
    pool_models = PoolModels(settings.config.pools, models, settings.base_dir)
    check_vram_fit(settings, inventory, pool_models)
    supervisor = Supervisor(metrics)
    host = AdapterHost(metrics=metrics)
    pools = PoolManager(
        settings.config.pools,
        inventory,
        host,
        # Upstream API keys were read from the environment once, by load_settings.
        adapter_factory(AdapterContext(api_keys=settings.upstream_api_keys)),
        metrics,
        probe_interval_s=probe_interval_s,
        models=pool_models,
        clock=clock.now,
        supervisor=supervisor,
        supervision=(supervision or (lambda s: s))(
            supervision_of(settings, inventory, pool_models)
        ),
    )
    dispatcher = Dispatcher(
        settings.config, pools, host, metrics, clock=clock, supervisor=supervisor
    )
    admission = Admission(settings.config, pools, dispatcher, metrics)
    server = settings.config.server
    artifacts = ArtifactStore(
        writable_dir(settings, "server.artifacts_dir", Path(server.artifacts_dir).expanduser()),
        max_bytes=server.artifact_max_bytes,
    )
    dispatcher.endings.trace = TraceWriter(artifacts, retention=server.trace_retention)
    return AppDeps(
        settings=settings,
        pools=pools,
        service=TaskService(settings.config, dispatcher, admission),
        metrics=metrics,
        host=host,
        models=models,
        artifacts=artifacts,
        supervisor=supervisor,
    )
