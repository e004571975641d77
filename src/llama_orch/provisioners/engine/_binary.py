"""binary mode: download a prebuilt engine archive, verify its sha256, unpack it safely."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from llama_orch.config import PoolConfig
from llama_orch.observability.narration import narrate
from llama_orch.provisioners.engine._context import ProvisionContext
from llama_orch.provisioners.engine._engines import EngineKind
from llama_orch.provisioners.engine._fetch import (
    download,
    find_program,
    sha256_of,
    unpack,
    verify,
)
from llama_orch.provisioners.engine._index import EngineEntry, entry_id, now_ms
from llama_orch.provisioners.engine._lock import exclusive
from llama_orch.provisioners.engine._policy import check_outbound
from llama_orch.provisioners.engine._types import Plan, PlanStep, PreparedEngine, ProvisionError

_MARKER = ".llorch-installed"
_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".tar", ".zip")


def archive_name(url: str) -> str:
    return PurePosixPath(unquote(urlsplit(url).path)).name or "engine-archive"


def version_of(url: str) -> str:
    name = archive_name(url)
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _make_executable(program: Path) -> None:
    """Archives packed elsewhere (a zip from another system) can drop the mode bits; every
    launch would then fail with 'Permission denied'. Whoever may read it may run it."""
    mode = program.stat().st_mode
    wanted = mode | ((mode & 0o444) >> 2)
    if wanted != mode:
        program.chmod(wanted)


def _check_replaceable(directory: Path) -> None:
    """An install replaces its directory: only one llama-orch installed into, or an empty one
    (``binary.install_dir`` may point anywhere, ``~/bin`` included)."""
    try:
        entries = {p.name for p in directory.iterdir()}
    except FileNotFoundError:
        return
    except NotADirectoryError:
        entries = {directory.name}
    if entries and _MARKER not in entries:
        raise ProvisionError(
            "preflight",
            f"binary.install_dir {directory} already holds files llama-orch did not install; "
            "it would replace them. Point install_dir at a new or empty directory (or remove "
            "it) and start again",
        )


class BinaryProvider:
    mode = "binary"

    def __init__(self, ctx: ProvisionContext, kind: EngineKind) -> None:
        self.ctx = ctx
        self.kind = kind

    def _binary(self, pool: PoolConfig) -> tuple[str, str]:
        assert pool.provisioning is not None and pool.provisioning.binary is not None
        binary = pool.provisioning.binary
        assert binary.url is not None and binary.checksum is not None  # config validation
        return binary.url, binary.checksum

    def install_dir(self, pool: PoolConfig) -> Path:
        assert pool.provisioning is not None and pool.provisioning.binary is not None
        url, checksum = self._binary(pool)
        configured = pool.provisioning.binary.install_dir
        if configured:
            return Path(configured).expanduser()
        digest = checksum.removeprefix("sha256:")[:16]
        return self.ctx.engine_dir(self.kind.engine) / "binary" / f"{version_of(url)}-{digest}"

    def _installed(self, pool: PoolConfig) -> Path | None:
        directory = self.install_dir(pool)
        _, checksum = self._binary(pool)
        try:
            if (directory / _MARKER).read_text().strip() != checksum:
                return None
        except OSError:
            return None
        return find_program(directory, self.kind.program)

    def plan(self, pool: PoolConfig) -> Plan:
        url, checksum = self._binary(pool)
        directory = self.install_dir(pool)
        steps = [PlanStep("preflight", "downloads allowed by provisioning and network_policy")]
        if self._installed(pool) is not None:
            steps.append(
                PlanStep("cached", f"{self.kind.program} already installed in {directory}")
            )
        else:
            steps += [
                PlanStep("download", url.split("?")[0]),
                PlanStep("verify", checksum),
                PlanStep("unpack", f"into {directory} (no absolute paths, no .., no links out)"),
                PlanStep("locate", f"{self.kind.program} in the unpacked tree"),
            ]
        steps.append(PlanStep("record", f"engine entry {self.kind.engine}:{version_of(url)}"))
        return Plan(pool.id, self.kind.engine, self.mode, tuple(steps))

    async def ensure(self, pool: PoolConfig) -> PreparedEngine:
        assert pool.provisioning is not None
        url, checksum = self._binary(pool)
        program = self._installed(pool)
        if program is None:
            directory = self.install_dir(pool)
            lock = self.ctx.engine_dir(self.kind.engine) / ".locks" / f"{directory.name}.lock"
            async with exclusive(lock, f"{archive_name(url)} in {directory}"):
                # Another pool (or process) may have installed it while this one waited.
                program = self._installed(pool) or await self._install(pool, url, checksum)
        version = version_of(url)
        digest = "sha256:" + checksum.removeprefix("sha256:").lower()
        entry = EngineEntry(
            id=entry_id(self.kind.engine, version, digest),
            engine=self.kind.engine,
            version=version,
            artifacts=[str(program)],
            build_ref=archive_name(url),
            digest=digest,
            created_ms=now_ms(),
        )
        return await self.ctx.record(
            pool,
            entry,
            self.mode,
            binary_path=str(program),
            workdir=str(self.install_dir(pool)),
        )

    async def _install(self, pool: PoolConfig, url: str, checksum: str) -> Path:
        assert pool.provisioning is not None
        scheme = urlsplit(url).scheme.lower()
        if scheme != "file" and not pool.provisioning.allow_binary_downloads:
            raise ProvisionError(
                "preflight",
                f"pool {pool.id} would download {archive_name(url)}, but "
                "provisioning.allow_binary_downloads is false; set it to true (and allow the "
                "host in network_policy) or install the engine yourself and use mode: external",
            )
        check_outbound(self.ctx.network_policy, url)
        self.ctx.require_disk(self.kind.engine, f"unpacking {archive_name(url)}")
        directory = self.install_dir(pool)
        _check_replaceable(directory)
        downloads = self.ctx.engine_dir(self.kind.engine) / ".downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        archive = downloads / f"{checksum.removeprefix('sha256:')[:16]}-{archive_name(url)}"
        narrate(
            "engine-provisioner",
            "download",
            pool.id,
            f"Downloads {archive_name(url)} for pool {pool.id}.",
            pool_id=pool.id,
            engine=self.kind.engine,
        )
        try:
            if scheme == "file":
                shutil.copyfile(unquote(urlsplit(url).path), archive)
                actual = sha256_of(archive)
            else:
                actual = await download(url, archive, ca_roots=self.ctx.ca_roots)
            verify(checksum, actual, archive_name(url))
            staging = directory.with_name(f".{directory.name}.staging")
            shutil.rmtree(staging, ignore_errors=True)
            try:
                unpack(archive, staging, name=archive_name(url))
                found = find_program(staging, self.kind.program)
                if found is None:
                    raise ProvisionError(
                        "locate",
                        f"{archive_name(url)} holds no {self.kind.program}; check binary.url "
                        f"points at a {self.kind.engine} server release",
                    )
                relative = found.relative_to(staging)
                _make_executable(found)
                (staging / _MARKER).write_text(checksum)
                shutil.rmtree(directory, ignore_errors=True)
                directory.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(directory)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except FileNotFoundError as exc:
            raise ProvisionError("download", f"{url} does not exist") from exc
        finally:
            archive.unlink(missing_ok=True)
        return directory / relative
