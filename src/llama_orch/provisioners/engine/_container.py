"""container mode: podman (rootless, preferred) or docker runs the engine's image.

The image is pulled by digest; a tag alone works but warns, since what it names can change.
Each replica runs ``<runtime> run --rm`` with its device mask, its port published on loopback
and the model's directory mounted read-only; stopping the replica stops the container (the
runtime forwards SIGTERM to it).
"""

from __future__ import annotations

from pathlib import Path

from llama_orch.config import PoolConfig
from llama_orch.observability.narration import narrate
from llama_orch.provisioners.engine._context import ProvisionContext
from llama_orch.provisioners.engine._engines import EngineKind
from llama_orch.provisioners.engine._index import EngineEntry, entry_id, now_ms
from llama_orch.provisioners.engine._types import Plan, PlanStep, PreparedEngine, ProvisionError

RUNTIMES = ("podman", "docker")


def image_ref(pool: PoolConfig) -> tuple[str, str | None]:
    """(reference to pull and run, warning or None)."""
    assert pool.provisioning is not None and pool.provisioning.container is not None
    c = pool.provisioning.container
    assert c.image is not None  # config validation
    if c.digest:
        digest = c.digest if c.digest.startswith("sha256:") else f"sha256:{c.digest}"
        return f"{c.image}@{digest}", None
    tag = c.tag or "latest"
    return (
        f"{c.image}:{tag}",
        f"pool {pool.id} runs {c.image}:{tag} by tag: what it names can change under you; "
        "pin provisioning.container.digest",
    )


def _version(pool: PoolConfig) -> str:
    assert pool.provisioning is not None and pool.provisioning.container is not None
    c = pool.provisioning.container
    return c.tag or (c.digest or "").removeprefix("sha256:")[:12] or "latest"


class ContainerProvider:
    mode = "container"

    def __init__(self, ctx: ProvisionContext, kind: EngineKind) -> None:
        self.ctx = ctx
        self.kind = kind

    def runtime(self) -> str | None:
        for name in RUNTIMES:
            found = self.ctx.which(name)
            if found:
                return found
        return None

    def plan(self, pool: PoolConfig) -> Plan:
        ref, warning = image_ref(pool)
        runtime = self.runtime() or "podman|docker (none found)"
        steps = [
            PlanStep("preflight", f"container runtime {runtime}, NVIDIA container toolkit"),
            PlanStep("pull", ref + (" (tag only: pin a digest)" if warning else "")),
            PlanStep("record", f"engine entry {self.kind.engine}:{_version(pool)}"),
        ]
        return Plan(pool.id, self.kind.engine, self.mode, tuple(steps))

    def _gpu_toolkit(self, runtime: str) -> None:
        """The NVIDIA container toolkit must hand GPUs to containers (not on simulated GPUs)."""
        if self.ctx.simulated:
            return
        if runtime.endswith("podman"):
            specs = [
                Path(d) / name for d in self.ctx.cdi_dirs for name in ("nvidia.yaml", "nvidia.json")
            ]
            if not any(p.exists() for p in specs):
                raise ProvisionError(
                    "preflight",
                    "podman has no NVIDIA CDI spec (looked in "
                    f"{', '.join(self.ctx.cdi_dirs)}); install the NVIDIA container toolkit and "
                    "run `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
                )
        elif not (self.ctx.which("nvidia-container-runtime") or self.ctx.which("nvidia-ctk")):
            raise ProvisionError(
                "preflight",
                "docker cannot reach the GPUs: the NVIDIA container toolkit is not installed; "
                "install it and run `sudo nvidia-ctk runtime configure --runtime=docker`",
            )

    async def ensure(self, pool: PoolConfig) -> PreparedEngine:
        assert pool.provisioning is not None
        runtime = self.runtime()
        if runtime is None:
            raise ProvisionError(
                "preflight",
                "neither podman nor docker is on PATH; install podman (rootless) and the NVIDIA "
                "container toolkit (nvidia-ctk cdi generate), or use another provisioning mode",
            )
        self._gpu_toolkit(runtime)
        ref, warning = image_ref(pool)
        if warning:
            narrate(
                "engine-provisioner",
                "pull-by-tag",
                pool.id,
                warning,
                level="warning",
                pool_id=pool.id,
            )
        log = self.ctx.engine_dir(self.kind.engine) / "logs" / f"{pool.id}.log"
        await self.ctx.step(
            "pull", [runtime, "pull", ref], log_path=log, target=ref, env=self.ctx.tool_env()
        )
        c = pool.provisioning.container
        assert c is not None and c.image is not None
        version = _version(pool)
        digest = f"sha256:{c.digest.removeprefix('sha256:')}" if c.digest else None
        entry = EngineEntry(
            id=entry_id(self.kind.engine, version, digest),
            engine=self.kind.engine,
            version=version,
            artifacts=[ref],
            build_ref=c.tag,
            digest=digest,
            created_ms=now_ms(),
        )
        return await self.ctx.record(
            pool,
            entry,
            self.mode,
            image_ref=ref,
            runtime=runtime,
            warnings=(warning,) if warning else (),
        )
