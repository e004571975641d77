"""package mode: a pinned engine package (``vllm==X``) in its own virtual environment.

Installs only when ``provisioning.allow_package_installs`` is true; otherwise the error carries
the exact commands to run by hand. The venv lives under ``<cache>/<engine>/venv-<version>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llama_orch.config import PoolConfig
from llama_orch.provisioners.engine._context import ProvisionContext
from llama_orch.provisioners.engine._engines import EngineKind
from llama_orch.provisioners.engine._index import EngineEntry, entry_id, now_ms
from llama_orch.provisioners.engine._lock import exclusive
from llama_orch.provisioners.engine._policy import check_outbound
from llama_orch.provisioners.engine._types import Plan, PlanStep, PreparedEngine, ProvisionError

#: Where pip installs from when ``provisioning.package.repo`` is unset.
PYPI = "https://pypi.org/simple"


class PackageProvider:
    mode = "package"

    def __init__(self, ctx: ProvisionContext, kind: EngineKind) -> None:
        self.ctx = ctx
        self.kind = kind

    def _requirement(self, pool: PoolConfig) -> tuple[str, str]:
        assert pool.provisioning is not None
        package = pool.provisioning.package
        name = (package.name if package else None) or self.kind.package
        version = package.version if package else None
        if name is None:
            raise ProvisionError(
                "plan",
                f"{self.kind.engine} is not installable as a Python package; use mode: container",
            )
        if not version:
            raise ProvisionError(
                "plan",
                f"package mode needs an exact version: set provisioning.package.version "
                f"(e.g. {name}==<version>) so the engine is reproducible",
            )
        return name, version

    def venv(self, pool: PoolConfig) -> Path:
        name, version = self._requirement(pool)
        return self.ctx.engine_dir(self.kind.engine) / f"venv-{name}-{version}"

    def commands(self, pool: PoolConfig) -> list[list[str]]:
        name, version = self._requirement(pool)
        venv = self.venv(pool)
        assert pool.provisioning is not None
        index = pool.provisioning.package.repo if pool.provisioning.package else None
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", f"{name}=={version}"]
        if index:
            pip += ["--index-url", index]
        return [[sys.executable, "-m", "venv", str(venv)], pip]

    def plan(self, pool: PoolConfig) -> Plan:
        venv = self.venv(pool)
        program = venv / "bin" / self.kind.program
        if program.exists():
            steps = [PlanStep("cached", f"{program} already installed")]
        else:
            steps = [PlanStep("preflight", "provisioning.allow_package_installs must be true")]
            steps += [PlanStep("install", " ".join(cmd)) for cmd in self.commands(pool)]
        steps.append(
            PlanStep("record", f"engine entry {self.kind.engine}:{self._requirement(pool)[1]}")
        )
        return Plan(pool.id, self.kind.engine, self.mode, tuple(steps))

    async def ensure(self, pool: PoolConfig) -> PreparedEngine:
        venv = self.venv(pool)
        # Two pools on one package would build one venv at once: the second waits for it.
        lock = venv.parent / ".locks" / f"{venv.name}.lock"
        async with exclusive(lock, f"the venv {venv}"):
            return await self._ensure(pool, venv)

    async def _ensure(self, pool: PoolConfig, venv: Path) -> PreparedEngine:
        assert pool.provisioning is not None
        name, version = self._requirement(pool)
        program = venv / "bin" / self.kind.program
        if not program.exists():
            commands = self.commands(pool)
            if not pool.provisioning.allow_package_installs:
                shown = " && ".join(" ".join(cmd) for cmd in commands)
                raise ProvisionError(
                    "preflight",
                    f"{name}=={version} is not installed and provisioning.allow_package_installs "
                    f"is false; set it to true, or run: {shown}",
                )
            index = pool.provisioning.package.repo if pool.provisioning.package else None
            check_outbound(self.ctx.network_policy, index or PYPI, step="install")
            self.ctx.require_disk(self.kind.engine, f"installing {name}=={version}")
            log = self.ctx.engine_dir(self.kind.engine) / "logs" / f"{pool.id}.log"
            # pip would otherwise ask PyPI for its own newer version: an unplanned download.
            env = {**self.ctx.tool_env(), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
            for step, cmd in zip(("venv", "install"), commands, strict=True):
                await self.ctx.step(step, cmd, log_path=log, target=f"{name}=={version}", env=env)
            if not program.exists():
                raise ProvisionError("install", f"{name}=={version} installed no {program.name}")
        entry = EngineEntry(
            id=entry_id(self.kind.engine, version, None),
            engine=self.kind.engine,
            version=version,
            artifacts=[str(program)],
            build_ref=f"{name}=={version}",
            created_ms=now_ms(),
        )
        return await self.ctx.record(
            pool, entry, self.mode, binary_path=str(program), workdir=str(venv)
        )
