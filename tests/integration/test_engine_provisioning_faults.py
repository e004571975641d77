"""What a careless operator or a misbehaving build tool does to engine provisioning: each ends
in one typed, actionable ``ProvisionError``, with nothing left running or half-written."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
import sys
import tarfile
from pathlib import Path

import pytest

from llama_orch.config._models import NetworkPolicyConfig
from llama_orch.pool.launch.local import _gone
from llama_orch.provisioners.engine import (
    FileEngineIndex,
    ProvisionContext,
    ProvisionError,
    prepare,
    provider_for,
)
from llama_orch.provisioners.engine._steps import run_step
from tests.support.engines import engine_archive, fake_script
from tests.support.https_files import https_files
from tests.support.llama_repo import llama_cpp_repo
from tests.support.pools import llamacpp_pool

FILES_ONLY = NetworkPolicyConfig(allowed_schemes=["file"])
ALLOW_LOCAL = NetworkPolicyConfig(
    allow_outbound=True, allowed_hosts=["127.0.0.1"], allowed_schemes=["https"]
)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _ctx(tmp_path: Path) -> ProvisionContext:
    return ProvisionContext(
        cache_root=tmp_path / "cache",
        index=FileEngineIndex(tmp_path / "catalog"),
        network_policy=FILES_ONLY,
        simulated=True,
    )


class TestSteps:
    async def test_one_huge_output_line_fails_with_a_bounded_tail(self, tmp_path: Path) -> None:
        """A tool printing a 200 kB line without a newline (a progress bar) is read in bounded
        pieces: the step fails as a ProvisionError naming it, its tail cut short."""
        noisy = "import sys; sys.stdout.write('x' * 200_000); sys.exit(2)"
        with pytest.raises(ProvisionError) as caught:
            await run_step(
                "build",
                [sys.executable, "-c", noisy],
                log_path=tmp_path / "log",
                target="t",
            )
        assert "build" == caught.value.step
        assert "status 2" in caught.value.message
        assert len(caught.value.detail or "") < 8_192
        assert 200_000 <= (tmp_path / "log").stat().st_size

    async def test_a_cancelled_step_leaves_no_process_behind(self, tmp_path: Path) -> None:
        """A build cancelled midway (llorch stops) takes its whole process tree with it."""
        pid_file = tmp_path / "child.pid"
        script = f"sleep 60 & echo $! > {pid_file}; wait"
        step = asyncio.ensure_future(
            run_step("build", ["sh", "-c", script], log_path=tmp_path / "log", target="t")
        )
        for _ in range(400):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            await asyncio.sleep(0.025)
        child = int(pid_file.read_text())
        step.cancel()
        with pytest.raises(asyncio.CancelledError):
            await step
        for _ in range(400):
            if _gone(child):
                break
            await asyncio.sleep(0.025)
        assert _gone(child)


class TestSharedBuilds:
    async def test_two_pools_asking_for_one_source_build_share_it(self, tmp_path: Path) -> None:
        """Two pools with the same source config ensure at once: one checkout and one build,
        which both wait for; neither trips over the other's clone."""
        repo = llama_cpp_repo(tmp_path)
        source = {"repo": str(repo), "ref": "master"}
        pools = [llamacpp_pool("m.gguf", pool_id=p, mode="source", source=source) for p in "ab"]
        ctx = _ctx(tmp_path)
        first, second = await asyncio.gather(*(provider_for(p, ctx).ensure(p) for p in pools))
        assert first.binary_path == second.binary_path
        log = (tmp_path / "cache" / "llamacpp" / "logs" / "a.log").read_text()
        log += (tmp_path / "cache" / "llamacpp" / "logs" / "b.log").read_text()
        assert 1 == log.count("--- clone:")
        assert 1 == log.count("--- build:")

    async def test_two_pools_asking_for_one_binary_unpack_it_once(self, tmp_path: Path) -> None:
        """Two pools pinning the same archive at once: one download and unpack, both get the
        same binary (the second waits, then finds it installed)."""
        archive = engine_archive("llama-server")
        with https_files({"/llama-b1.tar.gz": archive}, tmp_path) as served:
            binary = {"url": f"{served.url}/llama-b1.tar.gz", "checksum": _sha(archive)}
            pools = [
                llamacpp_pool("m.gguf", pool_id=p, binary=binary, allow_binary_downloads=True)
                for p in "ab"
            ]
            ctx = dataclasses.replace(
                _ctx(tmp_path), network_policy=ALLOW_LOCAL, ca_roots=(str(served.ca_path),)
            )
            first, second = await asyncio.gather(*(provider_for(p, ctx).ensure(p) for p in pools))
        assert ["/llama-b1.tar.gz"] == served.requests
        assert first.binary_path == second.binary_path
        assert os.access(first.binary_path or "", os.X_OK)


def _archive_file(tmp_path: Path, *, mode: int = 0o755) -> tuple[Path, dict[str, str]]:
    """A local tar.gz holding ``e/bin/llama-server`` with ``mode``; its pool ``binary`` block."""
    buf = io.BytesIO()
    script = fake_script("llama-server").encode()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        exe = tarfile.TarInfo("e/bin/llama-server")
        exe.size, exe.mode = len(script), mode
        tf.addfile(exe, io.BytesIO(script))
    path = tmp_path / "llama-b9.tar.gz"
    path.write_bytes(buf.getvalue())
    return path, {"url": path.as_uri(), "checksum": _sha(buf.getvalue())}


class TestBinaryMistakes:
    async def test_an_install_dir_holding_other_files_is_left_alone(self, tmp_path: Path) -> None:
        """binary.install_dir pointed at a directory in use (``~/bin``) would be replaced by
        the unpacked archive: refused, naming the directory, with every file still there."""
        mine = tmp_path / "bin"
        mine.mkdir()
        (mine / "notes.txt").write_text("keep me")
        _, binary = _archive_file(tmp_path)
        pool = llamacpp_pool("m.gguf", binary={**binary, "install_dir": str(mine)})
        with pytest.raises(ProvisionError) as caught:
            await provider_for(pool, _ctx(tmp_path)).ensure(pool)
        assert "install_dir" in caught.value.message and str(mine) in caught.value.message
        assert ["notes.txt"] == [p.name for p in mine.iterdir()]
        assert "keep me" == (mine / "notes.txt").read_text()

    async def test_an_installed_engine_is_replaced_in_its_own_install_dir(
        self, tmp_path: Path
    ) -> None:
        """A directory llama-orch installed into (a new pin) is replaced as before."""
        mine = tmp_path / "engine"
        archive, binary = _archive_file(tmp_path)
        pool = llamacpp_pool("m.gguf", binary={**binary, "install_dir": str(mine)})
        await provider_for(pool, _ctx(tmp_path)).ensure(pool)
        archive.unlink()
        _, newer = _archive_file(tmp_path, mode=0o775)
        again = llamacpp_pool("m.gguf", binary={**newer, "install_dir": str(mine)})
        prepared = await provider_for(again, _ctx(tmp_path)).ensure(again)
        assert Path(prepared.binary_path or "").is_relative_to(mine)

    async def test_a_program_without_the_executable_bit_is_made_runnable(
        self, tmp_path: Path
    ) -> None:
        """An archive whose server lost its mode bits (packed on another system) would fail
        every launch with 'Permission denied': the located program is made executable."""
        _, binary = _archive_file(tmp_path, mode=0o644)
        pool = llamacpp_pool("m.gguf", binary=binary)
        prepared = await provider_for(pool, _ctx(tmp_path)).ensure(pool)
        assert os.access(prepared.binary_path or "", os.X_OK)


class TestUnusablePaths:
    async def test_an_engine_cache_that_is_a_file_is_a_provision_error(
        self, tmp_path: Path
    ) -> None:
        """engines.cache_dir pointing at a file: a typed failure naming the path, for every
        mode that writes there, not a bare OSError ending supervision."""
        (tmp_path / "cache").write_text("not a directory")
        _, binary = _archive_file(tmp_path)
        repo = llama_cpp_repo(tmp_path)
        pools = [
            llamacpp_pool("m.gguf", binary=binary),
            llamacpp_pool("m.gguf", mode="source", source={"repo": str(repo), "ref": "master"}),
        ]
        for pool in pools:
            with pytest.raises(ProvisionError) as caught:
                await prepare(pool, _ctx(tmp_path))
            assert str(tmp_path / "cache") in caught.value.message
            assert "engines.cache_dir" in caught.value.message

    async def test_a_binary_url_naming_a_directory_is_a_provision_error(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "llama-b1.tar.gz").mkdir()
        binary = {"url": (tmp_path / "llama-b1.tar.gz").as_uri(), "checksum": _sha(b"")}
        pool = llamacpp_pool("m.gguf", binary=binary)
        with pytest.raises(ProvisionError, match="Is a directory"):
            await prepare(pool, _ctx(tmp_path))


class TestHungSteps:
    async def test_a_step_silent_past_the_idle_timeout_is_stopped(self, tmp_path: Path) -> None:
        """A clone stalled on the network or a build stuck on a lock prints nothing: after
        ``idle_timeout_s`` of silence it is killed (its whole tree) and fails, naming the
        setting to raise when the step is merely slow."""
        pid_file = tmp_path / "child.pid"
        script = f"echo started; sleep 60 & echo $! > {pid_file}; wait"
        with pytest.raises(ProvisionError) as caught:
            await run_step(
                "clone",
                ["sh", "-c", script],
                log_path=tmp_path / "log",
                target="t",
                idle_timeout_s=0.5,
            )
        assert "clone" == caught.value.step
        assert "engines.provision_idle_timeout_ms" in caught.value.message
        assert "started" in (caught.value.detail or "")
        child = int(pid_file.read_text())
        for _ in range(400):
            if _gone(child):
                break
            await asyncio.sleep(0.025)
        assert _gone(child)


class TestInterruptedClone:
    async def test_a_clone_that_died_midway_is_not_taken_for_a_checkout(
        self, tmp_path: Path
    ) -> None:
        """A clone killed midway (llama-orch stopped, the network dropped) leaves a .git that
        is no repository; the next preparation must clone again, not fetch into the debris
        and fail the same way at every start."""
        fake = tmp_path / "fakebin"
        fake.mkdir()
        (fake / "git").write_text(
            '#!/bin/sh\nif [ "$1" = clone ]; then for last; do :; done\n'
            'mkdir -p "$last/.git/objects"; echo "fatal: early EOF"; exit 128; fi\n'
            'exec git "$@"\n'
        )
        (fake / "git").chmod(0o755)
        repo = llama_cpp_repo(tmp_path)
        pool = llamacpp_pool("m.gguf", mode="source", source={"repo": str(repo), "ref": "master"})
        broken = dataclasses.replace(_ctx(tmp_path), path=f"{fake}:{os.environ['PATH']}")
        with pytest.raises(ProvisionError, match="early EOF"):
            await prepare(pool, broken)
        prepared = await prepare(pool, _ctx(tmp_path))
        assert os.access(prepared.binary_path or "", os.X_OK)
