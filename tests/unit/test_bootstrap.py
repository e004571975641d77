"""GPU-only fail-fast: real engines need an NVIDIA GPU; there is no CPU fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_orch.bootstrap import build_deps, check_serveable
from llama_orch.config import load_settings
from llama_orch.errors import ConfigError
from llama_orch.pool.engine_process import Supervision
from llama_orch.pool.gpus import Gpu, GpuInventory
from llama_orch.provisioners.engine import FileEngineIndex
from tests.support.server import config_of, mock_pool

NO_GPUS = GpuInventory(gpus=(), simulated=False, problem="NVML: driver not loaded")


def llamacpp_pool() -> dict[str, object]:
    return {
        "id": "cpp",
        "engine": "llamacpp",
        "model": "m",
        "endpoint": "http://127.0.0.1:9",
        "provisioning": {"mode": "external"},
    }


class TestGpuFailFast:
    def test_a_real_engine_without_gpus_is_refused(self) -> None:
        """With an empty NVML inventory a llama.cpp pool fails start-up, naming the pool, the
        NVML problem and the fix; nothing falls back to CPU."""
        settings = load_settings({}, config=config_of(llamacpp_pool()))
        with pytest.raises(ConfigError) as info:
            check_serveable(settings, NO_GPUS)
        message = str(info.value)
        assert "pools.0" in message and "NVML: driver not loaded" in message
        assert "no CPU fallback" in message

    def test_build_deps_fails_fast_too(self) -> None:
        """build_deps applies the same check before anything starts."""
        config = config_of(llamacpp_pool())
        settings = load_settings({}, config=config)
        with pytest.raises(ConfigError):
            build_deps(settings, inventory=NO_GPUS)

    def test_the_mock_engine_needs_no_gpu(self) -> None:
        """A mock pool is simulated in-process and starts without any GPU: beside a llama.cpp
        pool on the same GPU-less machine, only the llama.cpp pool is refused."""
        mixed = config_of(mock_pool(devices=None), llamacpp_pool())
        with pytest.raises(ConfigError) as info:
            check_serveable(load_settings({}, config=mixed), NO_GPUS)
        assert ["pools.1"] == [issue.path for issue in info.value.issues]
        alone = load_settings({}, config=config_of(mock_pool(devices=None)))
        check_serveable(alone, NO_GPUS)

    def test_devices_must_exist(self) -> None:
        """A pool naming a GPU the inventory lacks is refused with the GPUs present."""
        settings = load_settings({}, config=config_of(mock_pool(devices=[0])))
        one = GpuInventory((Gpu(3, "real", 1, 0, 0.0, simulated=False),), simulated=False)
        with pytest.raises(ConfigError) as info:
            check_serveable(settings, one)
        assert "GPUs [0] do not exist; present: [3]" in str(info.value)


class TestWritableDirectories:
    @pytest.mark.parametrize(
        ("section", "field"), [("server", "artifacts_dir"), ("catalog", "root")]
    )
    def test_an_unwritable_directory_stops_start_up(
        self, tmp_path: Path, section: str, field: str
    ) -> None:
        """A path the server cannot create is a config error naming its key, not a 500 on each
        request that stores an artifact (or a lost stream trace), or pulls a model."""
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        config = config_of(mock_pool(), **{section: {field: str(blocker / "dir")}})
        with pytest.raises(ConfigError) as info:
            build_deps(load_settings({}, config=config))
        assert [f"{section}.{field}"] == [issue.path for issue in info.value.issues]
        assert f"cannot write {blocker / 'dir'}" in str(info.value)

    def test_a_missing_artifacts_dir_is_created(self, tmp_path: Path) -> None:
        config = config_of(mock_pool(), server={"artifacts_dir": str(tmp_path / "a" / "b")})
        build_deps(load_settings({}, config=config))
        assert [] == list((tmp_path / "a" / "b").iterdir())


def test_the_engine_index_lies_beside_the_model_index(tmp_path: Path) -> None:
    """engines.json is in the catalog root with models.json: the default root follows
    XDG_CACHE_HOME for both, not for the models alone."""
    seen: list[Supervision] = []

    def keep(supervision: Supervision) -> Supervision:
        seen.append(supervision)
        return supervision

    settings = load_settings({"XDG_CACHE_HOME": str(tmp_path)}, config=config_of(mock_pool()))
    deps = build_deps(settings, supervision=keep)
    root = tmp_path / "llama-orch" / "catalog"
    assert deps.models is not None
    assert root == deps.models.store.root
    index = seen[0].provision.index
    assert isinstance(index, FileEngineIndex)
    assert root / "engines.json" == index.path
