"""Where a launched engine's model comes from: local paths as given, remote refs from the
catalog (pending while their pull runs, missing with the command otherwise)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_orch.catalog import CatalogStore
from llama_orch.catalog.entries import ModelEntry
from llama_orch.config import PoolConfig
from llama_orch.pool.engine_process import (
    ModelLocator,
    ModelMissing,
    ModelPending,
    catalog_model_locator,
)
from llama_orch.provisioners.fetch.file import FileFetcher
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.pool_models import PoolModels
from llama_orch.provisioners.progress import PullProgress, PullState

REF = "hf:org/tiny/tiny.gguf"


def pool(model: str) -> PoolConfig:
    return PoolConfig.model_validate(
        {
            "id": "lp",
            "engine": "llamacpp",
            "model": model,
            "provisioning": {
                "mode": "binary",
                "binary": {"url": "https://x.io/b", "checksum": "sha256:" + "0" * 64},
            },
        }
    )


@pytest.fixture
def provisioner(tmp_path: Path) -> ModelProvisioner:
    return ModelProvisioner(CatalogStore(tmp_path / "catalog"), {"file": FileFetcher()})


def locator(provisioner: ModelProvisioner, tmp_path: Path, model: str = REF) -> ModelLocator:
    models = PoolModels([pool(model)], provisioner, tmp_path)
    return catalog_model_locator(models, tmp_path)


class TestCatalogModelLocator:
    def test_local_path_is_used_where_it_lies(
        self, provisioner: ModelProvisioner, tmp_path: Path
    ) -> None:
        """A relative path is read against the base directory, not fetched."""
        (tmp_path / "m.gguf").write_bytes(b"GGUF")
        locate = locator(provisioner, tmp_path, "m.gguf")
        assert str(tmp_path / "m.gguf") == locate(pool("m.gguf"))

    def test_remote_ref_while_pulling_is_pending(
        self, provisioner: ModelProvisioner, tmp_path: Path
    ) -> None:
        """A running pull makes the model pending (no restart counted), not missing."""
        provisioner.progress[REF] = PullProgress(REF)
        with pytest.raises(ModelPending, match="being pulled"):
            locator(provisioner, tmp_path)(pool(REF))

    def test_remote_ref_not_pulled_names_the_command_and_the_failure(
        self, provisioner: ModelProvisioner, tmp_path: Path
    ) -> None:
        """A failed pull is missing (not pending), with its error and the pull command."""
        failed = PullProgress(REF)
        failed.finish(PullState.FAILED, {"code": "NOT_FOUND", "message": "no such repo"})
        provisioner.progress[REF] = failed
        with pytest.raises(ModelMissing) as info:
            locator(provisioner, tmp_path)(pool(REF))
        assert not isinstance(info.value, ModelPending)
        assert "no such repo" in str(info.value)
        assert f"llorch models pull {REF}" in str(info.value)

    def test_directory_entry_with_one_gguf_is_that_file(
        self, provisioner: ModelProvisioner, tmp_path: Path
    ) -> None:
        """A catalog directory holding one GGUF launches that file; other dirs as they are."""
        folder = tmp_path / "catalog" / "models" / "tiny"
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "tiny.gguf").write_bytes(b"GGUF")
        (folder / "README.md").write_text("hi")
        provisioner.store.put(
            ModelEntry(id="hf:org/tiny", ref="hf:org/tiny", local_path=str(folder))
        )
        assert str(folder / "sub" / "tiny.gguf") == locator(provisioner, tmp_path)(
            pool("hf:org/tiny")
        )
        (folder / "other.gguf").write_bytes(b"GGUF")
        assert str(folder) == locator(provisioner, tmp_path)(pool("hf:org/tiny"))
