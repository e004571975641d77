"""What every provider needs besides the pool: caches, the engine index, policy and tools."""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_orch.config import PoolConfig
from llama_orch.config._models import NetworkPolicyConfig
from llama_orch.provisioners.engine._index import EngineEntry, EngineIndex, FileEngineIndex
from llama_orch.provisioners.engine._steps import run_step
from llama_orch.provisioners.engine._types import PreparedEngine, ProvisionError

DEFAULT_CACHE_ROOT = "~/.cache/llama-orch"


@dataclass(frozen=True, slots=True)
class ProvisionContext:
    #: Engine caches live under ``<cache_root>/<engine>`` (ORCH-3205).
    cache_root: Path = field(default_factory=lambda: Path(DEFAULT_CACHE_ROOT).expanduser())
    index: EngineIndex = field(
        default_factory=lambda: FileEngineIndex(Path(DEFAULT_CACHE_ROOT).expanduser() / "catalog")
    )
    network_policy: NetworkPolicyConfig = field(default_factory=NetworkPolicyConfig)
    #: Extra CA certificates trusted for downloads (a private mirror).
    ca_roots: tuple[str, ...] = ()
    #: The GPU inventory is simulated: no CUDA checks, everything launched is labelled simulated.
    simulated: bool = False
    #: Where tools (git, cmake, podman, ...) are looked up; None: this process's PATH.
    path: str | None = None
    #: Free space the engine cache must have before a download, build or install.
    min_free_bytes: int = 2 * 2**30
    #: A provisioning step silent for this long is hung and stopped (None: never).
    step_idle_timeout_s: float | None = 3600.0
    #: Where podman finds CDI device specs (the NVIDIA toolkit writes nvidia.yaml there).
    cdi_dirs: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")

    def engine_dir(self, engine: str) -> Path:
        return self.cache_root.expanduser() / engine

    def which(self, tool: str) -> str | None:
        return shutil.which(tool, path=self.path)

    def require(self, tool: str, why: str, install_hint: str) -> str:
        """The tool's path, or one actionable preflight failure."""
        found = self.which(tool)
        if found is None:
            raise ProvisionError(
                "preflight", f"{tool} is not on PATH; it is needed {why}. {install_hint}"
            )
        return found

    def require_disk(self, engine: str, why: str) -> None:
        """One actionable preflight failure when the engine cache's disk is too full."""
        probe = self.engine_dir(engine)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if free < self.min_free_bytes:
            raise ProvisionError(
                "preflight",
                f"{probe} has {free / 2**30:.1f} GiB free; {why} needs at least "
                f"{self.min_free_bytes / 2**30:.1f} GiB. Free some space or point "
                "engines.cache_dir at a larger disk",
            )

    def tool_env(self) -> dict[str, str]:
        """The environment tools run with: this process's, with the configured PATH."""
        env = dict(os.environ)
        if self.path is not None:
            env["PATH"] = self.path
        return env

    async def step(
        self, step: str, argv: list[str], *, log_path: Path, target: str, **kw: Any
    ) -> str:
        """Run one provisioning step with the tools' environment and the idle timeout."""
        kw.setdefault("env", self.tool_env())
        return await run_step(
            step,
            argv,
            log_path=log_path,
            target=target,
            idle_timeout_s=self.step_idle_timeout_s,
            **kw,
        )

    async def record(
        self, pool: PoolConfig, entry: EngineEntry, mode: str, **fields: Any
    ) -> PreparedEngine:
        """Write ``entry`` to the engine index; the PreparedEngine it stands for.

        The write waits for the catalog root's writers' lock, which another process (a second
        server, the CLI) may hold for as long as it likes: it waits in a worker thread so the
        event loop, and every stream it serves, keeps running meanwhile."""
        await asyncio.to_thread(self.index.put, entry)
        prov = pool.provisioning
        return PreparedEngine(
            engine=entry.engine,
            engine_version=entry.version,
            provisioning_mode=mode,
            build_ref=entry.build_ref,
            engine_digest=entry.digest,
            flags=tuple(entry.build_flags),
            args=tuple(prov.flags or ()) if prov else (),
            env=dict(prov.env or {}) if prov else {},
            engine_catalog_id=entry.id,
            simulated=self.simulated,
            **fields,
        )
