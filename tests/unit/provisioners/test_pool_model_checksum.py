"""``provisioning.model.checksum``: a launched pool serves only the bytes it names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from llama_orch.catalog import CatalogStore
from llama_orch.config import PoolConfig
from llama_orch.errors import InvalidParams, OrchError
from llama_orch.provisioners.fetch.file import FileFetcher
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.pool_models import PoolModels
from tests.support.gguf_files import tiny_llama_gguf


def pool(checksum: str) -> PoolConfig:
    return PoolConfig.model_validate(
        {
            "id": "lp",
            "engine": "llamacpp",
            "model": "m.gguf",
            "provisioning": {
                "mode": "binary",
                "binary": {"url": "https://x.io/b", "checksum": "sha256:" + "0" * 64},
                "model": {"checksum": checksum},
            },
        }
    )


@pytest.fixture
def provisioner(store: CatalogStore) -> ModelProvisioner:
    return ModelProvisioner(store, {"file": FileFetcher()})


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_model_with_other_bytes_is_not_registered(
    tmp_path: Path, provisioner: ModelProvisioner
) -> None:
    """Registering the pool's local model checks it against the configured checksum."""
    tiny_llama_gguf(tmp_path / "m.gguf")
    models = PoolModels([pool("sha256:" + "a" * 64)], provisioner, tmp_path)
    with pytest.raises(OrchError, match=r"expected sha256:a{64}"):
        models.register_local(pool("sha256:" + "a" * 64))
    assert [] == provisioner.store.list()


def test_a_catalog_entry_with_other_bytes_keeps_the_pool_from_serving(
    tmp_path: Path, provisioner: ModelProvisioner
) -> None:
    """An entry already in the catalog with another digest gates the pool, saying both."""
    model = tiny_llama_gguf(tmp_path / "m.gguf")
    provisioner.ensure_present_str("m.gguf", base_dir=str(tmp_path))
    wrong = PoolModels([pool("sha256:" + "b" * 64)], provisioner, tmp_path)
    problem = wrong.gate("lp", {0: 1 << 40})
    assert problem is not None
    assert "provisioning.model.checksum sha256:" + "b" * 64 in problem
    assert sha256_of(model) in problem
    right = PoolModels([pool(sha256_of(model))], provisioner, tmp_path)
    assert right.gate("lp", {0: 1 << 40}) is None


def test_a_reloads_model_is_held_to_the_roots_when_registered(
    tmp_path: Path, provisioner: ModelProvisioner
) -> None:
    """A client's reload carries catalog.local_roots to the registration: a model that became
    a link out of them after the request was checked is refused, nothing registered."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tiny_llama_gguf(tmp_path / "outside.gguf")
    (root / "m.gguf").symlink_to(outside)
    models = PoolModels([], provisioner, root)
    with pytest.raises(InvalidParams, match=r"outside catalog\.local_roots"):
        models.register_local(pool(sha256_of(outside)), within=(str(root),))
    assert [] == provisioner.store.list()
    models.register_local(pool(sha256_of(outside)))  # the operator's config: no bound
    assert 1 == len(provisioner.store.list())
