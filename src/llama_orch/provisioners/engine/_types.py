"""Plan, PreparedEngine and the provisioning errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ProvisionError(Exception):
    """An engine could not be prepared; ``step`` names what failed, the message how to fix it."""

    def __init__(self, step: str, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        #: The last lines of a build or tool log, when there is one.
        self.detail = detail

    def __str__(self) -> str:
        text = f"{self.step}: {self.message}"
        return f"{text}\n{self.detail}" if self.detail else text


class UnknownEngine(ProvisionError):
    """No provider exists for the pool's engine and provisioning mode."""


@dataclass(frozen=True, slots=True)
class PlanStep:
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What ``ensure`` would do, computed without side effects (deterministic, printable)."""

    pool_id: str
    engine: str
    mode: str
    steps: tuple[PlanStep, ...]

    def render(self) -> str:
        lines = [f"pool {self.pool_id}: engine {self.engine}, mode {self.mode}"]
        lines += [f"  {i}. {s.kind:<10} {s.detail}" for i, s in enumerate(self.steps, 1)]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pool_id": self.pool_id,
            "engine": self.engine,
            "mode": self.mode,
            "steps": [{"kind": s.kind, "detail": s.detail} for s in self.steps],
        }


@dataclass(frozen=True, slots=True)
class PreparedEngine:
    """What ``ensure`` produced; the pool manager launches replicas from it (SPEC §11)."""

    engine: str
    engine_version: str
    provisioning_mode: str
    #: The engine's executable (binary, source, package), or None for container/external.
    binary_path: str | None = None
    #: ``image@digest`` (or ``image:tag``) for container mode.
    image_ref: str | None = None
    #: The container runtime executable (podman or docker) for container mode.
    runtime: str | None = None
    build_ref: str | None = None
    engine_digest: str | None = None
    flags: tuple[str, ...] = ()
    #: Extra engine arguments and environment from the pool's provisioning config.
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    workdir: str | None = None
    engine_catalog_id: str | None = None
    #: Prepared on a simulated GPU inventory: whatever runs from it is labelled simulated.
    simulated: bool = False
    warnings: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "engine_version": self.engine_version,
            "provisioning_mode": self.provisioning_mode,
            "binary_path": self.binary_path,
            "image_ref": self.image_ref,
            "build_ref": self.build_ref,
            "engine_digest": self.engine_digest,
            "flags": list(self.flags),
            "engine_catalog_id": self.engine_catalog_id,
            "simulated": self.simulated,
        }
