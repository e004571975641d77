"""The engine provisioner end to end: real downloads over HTTPS, real git and CMake builds,
a recorded container runtime; and what an operator sees when each one fails."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from llama_orch.config import PoolConfig
from llama_orch.config._models import NetworkPolicyConfig
from llama_orch.provisioners.engine import (
    FileEngineIndex,
    ProvisionContext,
    ProvisionError,
    UnknownEngine,
    plan,
    provider_for,
)
from llama_orch.vocab import ProvisioningMode
from tests.support.engines import engine_archive, evil_archive, fake_script
from tests.support.https_files import HttpsFiles, https_files
from tests.support.llama_repo import git as _git
from tests.support.llama_repo import head as _head
from tests.support.llama_repo import llama_cpp_repo as _repo
from tests.support.pools import llamacpp_pool

ALLOW_LOCAL = NetworkPolicyConfig(
    allow_outbound=True, allowed_hosts=["127.0.0.1"], allowed_schemes=["https"]
)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _ctx(tmp_path: Path, served: HttpsFiles | None = None, **kw: object) -> ProvisionContext:
    return ProvisionContext(
        cache_root=tmp_path / "cache",
        index=FileEngineIndex(tmp_path / "catalog"),
        network_policy=ALLOW_LOCAL,
        ca_roots=(str(served.ca_path),) if served else (),
        simulated=True,
        **kw,  # type: ignore[arg-type]
    )


class TestBinary:
    async def test_downloads_verifies_unpacks_and_records(self, tmp_path: Path) -> None:
        """A pinned tar.gz over HTTPS lands in the engine cache and is recorded in the index."""
        archive = engine_archive("llama-server")
        with https_files({"/llama-b1.tar.gz": archive}, tmp_path) as served:
            pool = llamacpp_pool(
                "m.gguf",
                binary={"url": f"{served.url}/llama-b1.tar.gz", "checksum": _sha(archive)},
                allow_binary_downloads=True,
            )
            ctx = _ctx(tmp_path, served)
            prepared = await provider_for(pool, ctx).ensure(pool)
            again = await provider_for(pool, ctx).ensure(pool)
        assert ["/llama-b1.tar.gz"] == served.requests  # the second ensure is a cache hit
        assert prepared.binary_path == again.binary_path
        binary = Path(prepared.binary_path or "")
        assert binary.is_relative_to(tmp_path / "cache" / "llamacpp")
        assert os.access(binary, os.X_OK)
        assert "llama-b1" == prepared.engine_version
        assert _sha(archive) == prepared.engine_digest
        index = json.loads((tmp_path / "catalog" / "engines.json").read_text())
        assert 1 == index["version"]
        assert [prepared.engine_catalog_id] == list(index["engines"])
        assert "cached" in plan(pool, ctx).render()

    async def test_zip_archives_keep_the_executable_bit(self, tmp_path: Path) -> None:
        """Zip releases (as llama.cpp publishes them) unpack with their mode bits."""
        archive = engine_archive("llama-server", fmt="zip")
        with https_files({"/b2.zip": archive}, tmp_path) as served:
            pool = llamacpp_pool(
                "m.gguf",
                binary={"url": f"{served.url}/b2.zip", "checksum": _sha(archive)},
                allow_binary_downloads=True,
            )
            prepared = await provider_for(pool, _ctx(tmp_path, served)).ensure(pool)
        assert os.access(prepared.binary_path or "", os.X_OK)

    async def test_links_inside_the_archive_are_kept(self, tmp_path: Path) -> None:
        """A relative link that stays in the install dir (a .so version link) is fine."""
        buf = io.BytesIO()
        script = fake_script("llama-server").encode()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            exe = tarfile.TarInfo("e/bin/llama-server")
            exe.size, exe.mode = len(script), 0o755
            tf.addfile(exe, io.BytesIO(script))
            lib = tarfile.TarInfo("e/lib/libggml.so.1")
            tf.addfile(lib, io.BytesIO(b""))
            link = tarfile.TarInfo("e/lib/libggml.so")
            link.type, link.linkname = tarfile.SYMTYPE, "libggml.so.1"
            tf.addfile(link)
        archive = buf.getvalue()
        with https_files({"/l.tar.gz": archive}, tmp_path) as served:
            pool = llamacpp_pool(
                "m.gguf",
                binary={"url": f"{served.url}/l.tar.gz", "checksum": _sha(archive)},
                allow_binary_downloads=True,
            )
            prepared = await provider_for(pool, _ctx(tmp_path, served)).ensure(pool)
        lib_dir = Path(prepared.binary_path or "").parents[1] / "lib"
        assert "libggml.so.1" == os.readlink(lib_dir / "libggml.so")

    async def test_checksum_mismatch_installs_nothing(self, tmp_path: Path) -> None:
        """A download whose sha256 differs from the pin fails at verify, naming both digests."""
        archive = engine_archive("llama-server")
        wrong = "sha256:" + "0" * 64
        with https_files({"/b.tar.gz": archive}, tmp_path) as served:
            pool = llamacpp_pool(
                "m.gguf",
                binary={"url": f"{served.url}/b.tar.gz", "checksum": wrong},
                allow_binary_downloads=True,
            )
            with pytest.raises(ProvisionError) as caught:
                await provider_for(pool, _ctx(tmp_path, served)).ensure(pool)
        assert "verify" == caught.value.step
        assert _sha(archive) in caught.value.message and wrong in caught.value.message
        assert [] == list((tmp_path / "cache" / "llamacpp").glob("binary/*"))

    @pytest.mark.parametrize("kind", ["dotdot", "absolute", "link"])
    async def test_escaping_archives_are_refused(self, tmp_path: Path, kind: str) -> None:
        """Entries with .., absolute paths or links out of the install dir refuse the unpack."""
        archive = evil_archive(kind)
        with https_files({"/evil.tar.gz": archive}, tmp_path) as served:
            pool = llamacpp_pool(
                "m.gguf",
                binary={"url": f"{served.url}/evil.tar.gz", "checksum": _sha(archive)},
                allow_binary_downloads=True,
            )
            with pytest.raises(ProvisionError) as caught:
                await provider_for(pool, _ctx(tmp_path, served)).ensure(pool)
        assert "unpack" == caught.value.step
        assert "refused" in caught.value.message or "escaping" in caught.value.message
        assert not (tmp_path / "cache" / "escape.sh").exists()
        assert [] == list((tmp_path / "cache").rglob("escape.sh"))

    async def test_full_disk_is_a_preflight_failure(self, tmp_path: Path) -> None:
        """Too little free space in the engine cache fails before the download."""
        archive = engine_archive("llama-server")
        with https_files({"/b.tar.gz": archive}, tmp_path) as served:
            pool = llamacpp_pool(
                "m.gguf",
                binary={"url": f"{served.url}/b.tar.gz", "checksum": _sha(archive)},
                allow_binary_downloads=True,
            )
            ctx = _ctx(tmp_path, served, min_free_bytes=2**60)
            with pytest.raises(ProvisionError, match=r"engines\.cache_dir") as caught:
                await provider_for(pool, ctx).ensure(pool)
        assert ("preflight", []) == (caught.value.step, served.requests)

    async def test_policy_refusals_say_what_to_change(self, tmp_path: Path) -> None:
        """Downloads off by default, then the network policy: each refusal names its switch."""
        pool = llamacpp_pool(
            "m.gguf", binary={"url": "https://example.org/b.tar.gz", "checksum": _sha(b"x")}
        )
        with pytest.raises(ProvisionError, match="allow_binary_downloads"):
            await provider_for(pool, _ctx(tmp_path)).ensure(pool)
        allowed = llamacpp_pool(
            "m.gguf",
            binary={"url": "https://example.org/b.tar.gz", "checksum": _sha(b"x")},
            allow_binary_downloads=True,
        )
        with pytest.raises(ProvisionError, match="allowed_hosts"):
            await provider_for(allowed, _ctx(tmp_path)).ensure(allowed)


class TestSource:
    async def test_builds_llama_server_from_a_local_repo(self, tmp_path: Path) -> None:
        """clone -> checkout -> cmake configure (GGML_CUDA=ON) -> build; cached per commit+flags."""
        repo = _repo(tmp_path)
        pool = llamacpp_pool(
            "m.gguf",
            mode="source",
            source={
                "repo": str(repo),
                "ref": "master",
                "build": {"cmake_flags": ["-DLLAMA_CUBLAS=ON"]},
            },
        )
        ctx = _ctx(tmp_path)
        prepared = await provider_for(pool, ctx).ensure(pool)
        commit = _head(repo)
        assert prepared.engine_version.startswith(commit[:12] + "+")
        assert "-DGGML_CUDA=ON" in prepared.flags
        assert not any("CUBLAS" in f for f in prepared.flags)
        assert os.access(prepared.binary_path or "", os.X_OK)
        again = await provider_for(pool, ctx).ensure(pool)
        assert prepared.binary_path == again.binary_path

    async def test_a_new_commit_builds_a_new_version(self, tmp_path: Path) -> None:
        """After the ref moves, the next ensure fetches, builds anew and reports the commit."""
        repo = _repo(tmp_path)
        pool = llamacpp_pool("m.gguf", mode="source", source={"repo": str(repo), "ref": "master"})
        ctx = _ctx(tmp_path)
        first = await provider_for(pool, ctx).ensure(pool)
        (repo / "NEWS").write_text("b2\n")
        _git("add", ".", cwd=repo)
        _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "b2", cwd=repo)
        second = await provider_for(pool, ctx).ensure(pool)
        assert second.engine_version.startswith(_head(repo)[:12] + "+")
        assert first.engine_version != second.engine_version
        assert first.binary_path != second.binary_path

    async def test_build_failure_names_the_step_and_shows_the_tail(self, tmp_path: Path) -> None:
        """A CMake error fails at configure, with the log's last lines in the error."""
        repo = _repo(tmp_path, broken=True)
        pool = llamacpp_pool("m.gguf", mode="source", source={"repo": str(repo), "ref": "master"})
        with pytest.raises(ProvisionError) as caught:
            await provider_for(pool, _ctx(tmp_path)).ensure(pool)
        assert "configure" == caught.value.step
        assert "CMake Error" in (caught.value.detail or "")
        assert "full output in" in caught.value.message

    async def test_cpu_build_flags_are_refused(self, tmp_path: Path) -> None:
        """GGML_CUDA=OFF would build a CPU engine: refused before anything runs."""
        pool = llamacpp_pool(
            "m.gguf",
            mode="source",
            source={"repo": "x", "ref": "master", "build": {"cmake_flags": ["-DGGML_CUDA=OFF"]}},
        )
        with pytest.raises(ProvisionError, match="GPUs only"):
            await provider_for(pool, _ctx(tmp_path)).ensure(pool)


class TestPackageAndContainer:
    async def test_package_without_permission_gives_the_command(self, tmp_path: Path) -> None:
        """With installs off, the error carries the exact venv + pip commands."""
        pool = PoolConfig.model_validate(
            {
                "id": "v",
                "engine": "vllm",
                "model": "m",
                "provisioning": {"mode": "package", "package": {"version": "0.9.2"}},
            }
        )
        with pytest.raises(ProvisionError) as caught:
            await provider_for(pool, _ctx(tmp_path)).ensure(pool)
        assert "allow_package_installs" in caught.value.message
        assert "pip install vllm==0.9.2" in caught.value.message

    async def test_container_pulls_by_digest_with_the_runtime_found(self, tmp_path: Path) -> None:
        """podman is preferred; the pull names image@digest and the entry records the digest."""
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        calls = tmp_path / "calls"
        runtime = bin_dir / "podman"
        runtime.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
        runtime.chmod(0o755)
        digest = "sha256:" + "ab" * 32
        pool = PoolConfig.model_validate(
            {
                "id": "v",
                "engine": "vllm",
                "model": "m",
                "provisioning": {
                    "mode": "container",
                    "container": {"image": "vllm/vllm-openai", "digest": digest},
                },
            }
        )
        prepared = await provider_for(pool, _ctx(tmp_path, path=str(bin_dir))).ensure(pool)
        assert f"pull vllm/vllm-openai@{digest}\n" == calls.read_text()
        assert str(runtime) == prepared.runtime
        assert digest == prepared.engine_digest

    async def test_podman_without_the_nvidia_toolkit_is_refused(self, tmp_path: Path) -> None:
        """On real GPUs, podman without an NVIDIA CDI spec fails preflight before any pull."""
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        calls = tmp_path / "calls"
        runtime = bin_dir / "podman"
        runtime.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
        runtime.chmod(0o755)
        pool = PoolConfig.model_validate(
            {
                "id": "t",
                "engine": "tgi",
                "model": "m",
                "provisioning": {"mode": "container", "container": {"image": "tgi"}},
            }
        )
        ctx = dataclasses.replace(
            _ctx(tmp_path, path=str(bin_dir)), simulated=False, cdi_dirs=(str(tmp_path / "cdi"),)
        )
        with pytest.raises(ProvisionError, match="nvidia-ctk cdi generate"):
            await provider_for(pool, ctx).ensure(pool)
        assert not calls.exists()

    async def test_no_runtime_is_one_actionable_failure(self, tmp_path: Path) -> None:
        """Without podman or docker, preflight says what to install."""
        pool = PoolConfig.model_validate(
            {
                "id": "v",
                "engine": "tgi",
                "model": "m",
                "provisioning": {"mode": "container", "container": {"image": "tgi"}},
            }
        )
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(ProvisionError, match="podman") as caught:
            await provider_for(pool, _ctx(tmp_path, path=str(empty))).ensure(pool)
        assert "preflight" == caught.value.step

    def test_unknown_engine_is_typed(self, tmp_path: Path) -> None:
        """An engine llama-orch cannot launch has no provider."""
        pool = PoolConfig.model_validate(
            {
                "id": "o",
                "engine": "openai",
                "model": "m",
                "endpoint": "http://x",
                "provisioning": {"mode": "external"},
            }
        )
        assert "external" == provider_for(pool).mode
        with pytest.raises(UnknownEngine):
            provider_for(
                pool.model_copy(
                    update={
                        "provisioning": pool.provisioning.model_copy(
                            update={"mode": ProvisioningMode.BINARY}
                        )
                    }
                )
            )  # type: ignore[union-attr]


def _wheel_index(root: Path) -> Path:
    """A file:// package index holding `fakevllm 0.1.0`, whose `vllm` script runs the fake."""
    module = (
        "import os, sys\n"
        "def main():\n"
        f"    os.execv({sys.executable!r}, [{sys.executable!r}, '-m', "
        "'llama_orch.testing.fake_engines.launch', 'vllm', *sys.argv[1:]])\n"
    )
    files = {
        "fakevllm/__init__.py": module,
        "fakevllm-0.1.0.dist-info/METADATA": (
            "Metadata-Version: 2.1\nName: fakevllm\nVersion: 0.1.0\n"
        ),
        "fakevllm-0.1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        "fakevllm-0.1.0.dist-info/entry_points.txt": "[console_scripts]\nvllm = fakevllm:main\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "fakevllm-0.1.0.dist-info/RECORD,,\n"
    files["fakevllm-0.1.0.dist-info/RECORD"] = record
    project = root / "simple" / "fakevllm"
    project.mkdir(parents=True)
    wheel = project / "fakevllm-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    (project / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    return root / "simple"


class TestPackageInstall:
    async def test_installs_a_pinned_package_into_its_own_venv(self, tmp_path: Path) -> None:
        """The index must pass the network policy; then the pinned package lands in a venv
        under the engine cache and its `vllm` executable is what replicas run."""
        index = _wheel_index(tmp_path / "index")
        pool = PoolConfig.model_validate(
            {
                "id": "v",
                "engine": "vllm",
                "model": "m",
                "provisioning": {
                    "mode": "package",
                    "allow_package_installs": True,
                    "package": {"name": "fakevllm", "version": "0.1.0", "repo": index.as_uri()},
                },
            }
        )
        with pytest.raises(ProvisionError, match="allowed_schemes"):
            await provider_for(pool, _ctx(tmp_path)).ensure(pool)
        ctx = dataclasses.replace(_ctx(tmp_path), network_policy=NetworkPolicyConfig())
        prepared = await provider_for(pool, ctx).ensure(pool)
        venv = tmp_path / "cache" / "vllm" / "venv-fakevllm-0.1.0"
        assert str(venv / "bin" / "vllm") == prepared.binary_path
        assert "0.1.0" == prepared.engine_version
        assert "cached" in plan(pool, ctx).render()
