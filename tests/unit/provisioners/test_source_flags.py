"""llama.cpp source builds: GPU flags, deprecated names, CUDA discovery, stale CMake caches."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_orch.provisioners.engine import ProvisionError
from llama_orch.provisioners.engine._source import (
    BASE_FLAGS,
    SourceProvider,
    find_cuda_root,
    normalize_cmake_flags,
)


class TestCmakeFlags:
    def test_deprecated_cuda_names_map_to_ggml_cuda(self) -> None:
        """LLAMA_CUBLAS/LLAMA_CUDA become the base GGML_CUDA=ON; other flags follow it."""
        flags = normalize_cmake_flags(["-DLLAMA_CUBLAS=ON", "-DLLAMA_CUDA=1", "-DGGML_NATIVE=OFF"])
        assert [*BASE_FLAGS, "-DGGML_NATIVE=OFF"] == flags

    @pytest.mark.parametrize("flag", ["-DGGML_CUDA=OFF", "-DLLAMA_CUBLAS=off", "-DLLAMA_CUDA=0"])
    def test_cpu_builds_are_refused(self, flag: str) -> None:
        """Turning CUDA off, under any name, is refused."""
        with pytest.raises(ProvisionError, match="GPUs only"):
            normalize_cmake_flags([flag])


class TestCudaRoot:
    def test_finds_a_versioned_toolkit(self, tmp_path: Path) -> None:
        """Without nvcc on PATH, the newest cuda-* directory with bin/nvcc is the root."""
        for version in ("cuda-11.8", "cuda-12.4"):
            (tmp_path / version / "bin").mkdir(parents=True)
            (tmp_path / version / "bin" / "nvcc").write_text("")
        assert tmp_path / "cuda-12.4" == find_cuda_root((str(tmp_path / "cuda"),))

    def test_none_when_absent(self, tmp_path: Path) -> None:
        """No toolkit anywhere: None (preflight then says what to install)."""
        assert find_cuda_root((str(tmp_path / "cuda"),)) is None


class TestStaleCache:
    def test_cache_with_deprecated_names_is_removed(self, tmp_path: Path) -> None:
        """A CMakeCache.txt still holding LLAMA_CUBLAS is discarded before configuring."""
        build, src = tmp_path / "build", tmp_path / "src"
        build.mkdir()
        (build / "CMakeCache.txt").write_text(
            f"CMAKE_HOME_DIRECTORY:INTERNAL={src}\nLLAMA_CUBLAS:BOOL=ON\n"
        )
        SourceProvider._invalidate_stale_cache(build, src)
        assert not (build / "CMakeCache.txt").exists()

    def test_current_cache_is_kept(self, tmp_path: Path) -> None:
        """A cache for this source tree without deprecated names stays (incremental builds)."""
        build, src = tmp_path / "build", tmp_path / "src"
        build.mkdir()
        (build / "CMakeCache.txt").write_text(
            f"CMAKE_HOME_DIRECTORY:INTERNAL={src}\nGGML_CUDA:BOOL=ON\n"
        )
        SourceProvider._invalidate_stale_cache(build, src)
        assert (build / "CMakeCache.txt").exists()
