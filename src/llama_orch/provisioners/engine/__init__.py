"""Engine provisioner: plan and prepare each pool's engine (SPEC §11).

``provider_for(pool, ctx)`` picks the provider of the pool's provisioning mode for its engine
(an unknown pairing is an ``UnknownEngine``); ``plan`` is pure and printable, ``ensure`` does the
work and returns a ``PreparedEngine`` after recording an ``EngineEntry``; ``prepare`` is what
callers use: provider and ensure in one, every failure a ``ProvisionError``. Providers are imported
only when a pool uses their mode, so unused modes cost nothing.

Modes: ``binary`` (download, verify, unpack), ``source`` (llama.cpp: git + CMake with CUDA),
``package`` (a pinned package in its own venv), ``container`` (podman or docker) and
``external`` (attach to a running engine).
"""

from __future__ import annotations

import importlib
from typing import Protocol

from llama_orch.config import PoolConfig
from llama_orch.provisioners.engine._command import ReplicaCommand, replica_command
from llama_orch.provisioners.engine._context import ProvisionContext
from llama_orch.provisioners.engine._engines import ENGINES, EngineKind, normalize_gpu_layers
from llama_orch.provisioners.engine._index import EngineEntry, EngineIndex, FileEngineIndex
from llama_orch.provisioners.engine._policy import check_outbound
from llama_orch.provisioners.engine._types import (
    Plan,
    PlanStep,
    PreparedEngine,
    ProvisionError,
    UnknownEngine,
)

__all__ = [
    "ENGINES",
    "EngineEntry",
    "EngineIndex",
    "FileEngineIndex",
    "Plan",
    "PlanStep",
    "PreparedEngine",
    "Provider",
    "ProvisionContext",
    "ProvisionError",
    "ReplicaCommand",
    "UnknownEngine",
    "check_outbound",
    "normalize_gpu_layers",
    "plan",
    "prepare",
    "provider_for",
    "replica_command",
]


class Provider(Protocol):
    mode: str

    def plan(self, pool: PoolConfig) -> Plan: ...

    async def ensure(self, pool: PoolConfig) -> PreparedEngine: ...


_MODES = {
    "binary": ("_binary", "BinaryProvider"),
    "source": ("_source", "SourceProvider"),
    "package": ("_package", "PackageProvider"),
    "container": ("_container", "ContainerProvider"),
}


def provider_for(pool: PoolConfig, ctx: ProvisionContext | None = None) -> Provider:
    ctx = ctx or ProvisionContext()
    if pool.provisioning is None:
        raise UnknownEngine("plan", f"pool {pool.id} ({pool.engine.value}) has no provisioning")
    mode = pool.provisioning.mode.value
    engine = pool.engine.value
    if mode == "external":
        from llama_orch.provisioners.engine._external import ExternalProvider

        return ExternalProvider(ctx, engine)
    kind: EngineKind | None = ENGINES.get(engine)
    if kind is None or mode not in _MODES:
        raise UnknownEngine(
            "plan",
            f"no {mode} provider for engine {engine}; launchable engines: "
            f"{', '.join(sorted(ENGINES))} (or use mode: external)",
        )
    module_name, class_name = _MODES[mode]
    module = importlib.import_module(f"{__name__}.{module_name}")
    provider: Provider = getattr(module, class_name)(ctx, kind)
    return provider


def plan(pool: PoolConfig, ctx: ProvisionContext | None = None) -> Plan:
    return provider_for(pool, ctx).plan(pool)


async def prepare(pool: PoolConfig, ctx: ProvisionContext) -> PreparedEngine:
    """Ensure ``pool``'s engine; a path the disk refuses is a ProvisionError naming it."""
    try:
        return await provider_for(pool, ctx).ensure(pool)
    except OSError as exc:
        where = exc.filename if exc.filename is not None else ctx.cache_root
        raise ProvisionError(
            "prepare",
            f"cannot prepare the {pool.engine.value} engine of pool {pool.id}: {where}: "
            f"{exc.strerror or exc}; engines.cache_dir (and any directory the pool's "
            "provisioning names) must be a writable directory, and the files it names must "
            "exist",
        ) from exc
