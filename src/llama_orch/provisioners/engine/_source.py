"""source mode (llama.cpp): clone or fetch the repo at a ref, build llama-server with CUDA.

- One checkout per engine under ``<cache>/llamacpp/src``; each (commit, flags) pair builds in
  its own ``build/<commit12>-<flags8>`` directory and is reused when its binary exists.
- GPU flags are always on: ``GGML_CUDA=ON``; the deprecated ``LLAMA_CUBLAS``/``LLAMA_CUDA`` map to
  it and a flag turning CUDA off is refused. A CMake cache holding the deprecated names is stale
  and removed before configuring.
- When ``nvcc`` is not on PATH the CUDA root is looked for and handed to CMake; ccache is used
  when present. ``engine_version`` is the commit plus a digest of the flags.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from llama_orch.config import PoolConfig
from llama_orch.provisioners.engine._context import ProvisionContext
from llama_orch.provisioners.engine._engines import EngineKind
from llama_orch.provisioners.engine._index import EngineEntry, entry_id, now_ms
from llama_orch.provisioners.engine._lock import exclusive
from llama_orch.provisioners.engine._policy import check_outbound
from llama_orch.provisioners.engine._types import Plan, PlanStep, PreparedEngine, ProvisionError

BASE_FLAGS = ("-DGGML_CUDA=ON", "-DLLAMA_BUILD_SERVER=ON", "-DCMAKE_BUILD_TYPE=Release")
_DEPRECATED_CUDA = ("LLAMA_CUBLAS", "LLAMA_CUDA", "GGML_CUBLAS")
#: Where CUDA toolkits install when nvcc is not on PATH.
CUDA_ROOTS = ("/usr/local/cuda", "/opt/cuda", "/usr/lib/cuda")


def normalize_cmake_flags(flags: list[str]) -> list[str]:
    """The base GPU flags plus the configured ones, deprecated names mapped, CPU builds refused."""
    out = list(BASE_FLAGS)
    for flag in flags:
        name, eq, value = flag.removeprefix("-D").partition("=")
        if name in _DEPRECATED_CUDA or name == "GGML_CUDA":
            if eq and value.upper() in ("OFF", "0", "FALSE", "NO"):
                raise ProvisionError(
                    "preflight",
                    f"cmake flag {flag} builds llama.cpp without CUDA; llama-orch runs engines "
                    "on GPUs only, remove it",
                )
            continue  # GGML_CUDA=ON is already in the base flags
        if flag not in out:
            out.append(flag)
    return out


def find_cuda_root(search: tuple[str, ...] = CUDA_ROOTS) -> Path | None:
    candidates = [Path(p) for p in search]
    for base in search:
        parent = Path(base).parent
        if parent.is_dir():
            candidates += sorted(parent.glob(Path(base).name + "-*"), reverse=True)
    for root in candidates:
        if (root / "bin" / "nvcc").exists():
            return root
    return None


def flags_digest(flags: list[str]) -> str:
    return hashlib.sha256("\0".join(flags).encode()).hexdigest()[:8]


class SourceProvider:
    mode = "source"

    def __init__(self, ctx: ProvisionContext, kind: EngineKind) -> None:
        if kind.engine != "llamacpp":
            raise ProvisionError(
                "plan", f"source builds exist for llamacpp only, not {kind.engine}; use container"
            )
        self.ctx = ctx
        self.kind = kind

    def _dirs(self, pool: PoolConfig) -> tuple[Path, Path]:
        assert pool.provisioning is not None and pool.provisioning.source is not None
        configured = pool.provisioning.source.build.cache_dir
        root = Path(configured).expanduser() if configured else self.ctx.engine_dir("llamacpp")
        return root / "src", root / "build"

    def _flags(self, pool: PoolConfig) -> list[str]:
        """Every CMake flag of the build: base, configured, CUDA root and ccache hints."""
        assert pool.provisioning is not None and pool.provisioning.source is not None
        flags = normalize_cmake_flags(list(pool.provisioning.source.build.cmake_flags or []))
        cuda_root = find_cuda_root() if self.ctx.which("nvcc") is None else None
        if cuda_root is not None:
            flags += [
                f"-DCUDAToolkit_ROOT={cuda_root}",
                f"-DCMAKE_CUDA_COMPILER={cuda_root}/bin/nvcc",
            ]
        if self.ctx.which("ccache"):
            flags += [
                "-DGGML_CCACHE=ON",
                "-DCMAKE_C_COMPILER_LAUNCHER=ccache",
                "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache",
            ]
        return flags

    def plan(self, pool: PoolConfig) -> Plan:
        assert pool.provisioning is not None and pool.provisioning.source is not None
        source = pool.provisioning.source
        src, build = self._dirs(pool)
        flags = self._flags(pool)
        steps = [
            PlanStep("preflight", "git, cmake, a C++ compiler, and CUDA (nvcc or a CUDA root)"),
            PlanStep("fetch" if (src / ".git").exists() else "clone", f"{source.repo} into {src}"),
            PlanStep("checkout", source.ref),
            PlanStep(
                "configure",
                f"cmake -S {src} -B {build}/<commit>-{flags_digest(flags)} " + " ".join(flags),
            ),
            PlanStep("build", "cmake --build ... --target llama-server"),
            PlanStep("record", "engine entry llamacpp:<commit>+<flags>"),
        ]
        return Plan(pool.id, self.kind.engine, self.mode, tuple(steps))

    def _preflight(self) -> str:
        git = self.ctx.require("git", "to fetch llama.cpp", "Install git (apt install git).")
        self.ctx.require("cmake", "to build llama.cpp", "Install cmake (apt install cmake).")
        if not (self.ctx.which("c++") or self.ctx.which("g++") or self.ctx.which("clang++")):
            raise ProvisionError(
                "preflight", "no C++ compiler on PATH; install one (apt install g++)"
            )
        if self.ctx.which("nvcc") is None and find_cuda_root() is None and not self.ctx.simulated:
            raise ProvisionError(
                "preflight",
                "nvcc is not on PATH and no CUDA toolkit was found under "
                f"{', '.join(CUDA_ROOTS)}; install the CUDA toolkit or put its bin/ on PATH",
            )
        return git

    async def ensure(self, pool: PoolConfig) -> PreparedEngine:
        git = self._preflight()
        flags = self._flags(pool)  # refuses CPU-only flags before anything is fetched
        src, _ = self._dirs(pool)
        # One checkout serves every ref: a second build waits rather than moving it under the
        # first one's feet, then finds its binary built (or builds its own ref).
        async with exclusive(src.with_name(".lock"), f"llama.cpp in {src}"):
            return await self._ensure(pool, git, flags)

    async def _ensure(self, pool: PoolConfig, git: str, flags: list[str]) -> PreparedEngine:
        assert pool.provisioning is not None and pool.provisioning.source is not None
        source = pool.provisioning.source
        src, builds = self._dirs(pool)
        log = builds.parent / "logs" / f"{pool.id}.log"
        env = self.ctx.tool_env()
        target = f"llama.cpp for {pool.id}"
        if not (src / ".git").exists():
            if "://" in source.repo:
                check_outbound(self.ctx.network_policy, source.repo, step="clone")
            # Cloned aside and moved in once complete: a clone that dies midway (killed, the
            # network dropped) leaves debris a later start clones over, never a broken checkout
            # it would fetch into.
            partial = src.with_name(f".{src.name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True)
            src.parent.mkdir(parents=True, exist_ok=True)
            clone = [git, "clone"]
            if source.submodules:
                clone.append("--recurse-submodules")
            await self.ctx.step(
                "clone", [*clone, source.repo, str(partial)], log_path=log, target=target, env=env
            )
            partial.rename(src)
        else:
            if "://" in source.repo:
                check_outbound(self.ctx.network_policy, source.repo, step="fetch")
            await self.ctx.step(
                "fetch",
                [
                    git,
                    "-C",
                    str(src),
                    "fetch",
                    "--tags",
                    source.repo,
                    "+refs/heads/*:refs/remotes/origin/*",
                ],
                log_path=log,
                target=target,
                env=env,
            )
        commit = await self._resolve(git, src, source.ref, log, target, env)
        await self.ctx.step(
            "checkout",
            [git, "-C", str(src), "checkout", "--detach", "--force", commit],
            log_path=log,
            target=target,
            env=env,
        )
        if source.submodules:
            await self.ctx.step(
                "submodules",
                [git, "-C", str(src), "submodule", "update", "--init", "--recursive"],
                log_path=log,
                target=target,
                env=env,
            )
        digest = flags_digest(flags)
        build = builds / f"{commit[:12]}-{digest}"
        binary = build / "bin" / "llama-server"
        if not binary.exists():
            self.ctx.require_disk("llamacpp", "building llama.cpp")
            self._invalidate_stale_cache(build, src)
            configure = ["cmake", "-S", str(src), "-B", str(build), *flags]
            if source.build.generator:
                configure += ["-G", source.build.generator]
            try:
                await self.ctx.step("configure", configure, log_path=log, target=target, env=env)
            except ProvisionError as exc:
                if "CUDA" in (exc.detail or ""):
                    exc.message += (
                        "; CUDA configure failed: check that the toolkit matches the driver "
                        "(nvidia-smi) and CUDAToolkit_ROOT"
                    )
                raise
            jobs = str(max(1, (os.cpu_count() or 2) - 1))
            await self.ctx.step(
                "build",
                ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs],
                log_path=log,
                target=target,
                env=env,
            )
            if not binary.exists():
                raise ProvisionError(
                    "build", f"the build finished but {binary} does not exist; see {log}"
                )
        version = f"{commit[:12]}+{digest}"
        entry = EngineEntry(
            id=entry_id("llamacpp", version, None),
            engine="llamacpp",
            version=version,
            artifacts=[str(binary)],
            build_ref=source.ref,
            build_flags=flags,
            created_ms=now_ms(),
        )
        return await self.ctx.record(
            pool, entry, self.mode, binary_path=str(binary), workdir=str(build)
        )

    async def _resolve(
        self, git: str, src: Path, ref: str, log: Path, target: str, env: dict[str, str]
    ) -> str:
        for candidate in (f"origin/{ref}", ref):
            try:
                return await self.ctx.step(
                    "resolve",
                    [
                        git,
                        "-C",
                        str(src),
                        "rev-parse",
                        "--verify",
                        "--quiet",
                        f"{candidate}^{{commit}}",
                    ],
                    log_path=log,
                    target=target,
                    env=env,
                )
            except ProvisionError:
                continue
        raise ProvisionError(
            "checkout", f"ref {ref!r} does not exist in the repository; check source.ref"
        )

    @staticmethod
    def _invalidate_stale_cache(build: Path, src: Path) -> None:
        cache = build / "CMakeCache.txt"
        try:
            text = cache.read_text(errors="replace")
        except OSError:
            return
        home = next(
            (
                line.split("=", 1)[1]
                for line in text.splitlines()
                if line.startswith("CMAKE_HOME_DIRECTORY:")
            ),
            None,
        )
        if any(name in text for name in _DEPRECATED_CUDA) or home != str(src):
            cache.unlink()
            shutil.rmtree(build / "CMakeFiles", ignore_errors=True)
