"""Before a launch the provisioner confirms a model's files are the ones it hashed: by their
identity (an open and an fstat) while it is unchanged, by a new hash once it changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llama_orch.catalog import CatalogStore, ModelEntry
from llama_orch.errors import DigestMismatch
from llama_orch.observability.metrics import Metrics
from llama_orch.provisioners.fetch.file import FileFetcher
from llama_orch.provisioners.fetch.hf import HfFetcher
from llama_orch.provisioners.models import ModelProvisioner
from tests.support.fake_hf_hub import HubRepo, HubState, fake_hf_hub
from tests.support.https_site import HttpsSite
from tests.support.threaded_server import serve_in_thread
from tests.unit.provisioners.conftest import OPEN, https_provisioner

PAYLOAD = bytes(range(256)) * 64


def rehashes(metrics: Metrics, result: str) -> float:
    """How many launch-time re-hashes ended ``result`` (the counter the check increments)."""
    value = metrics.registry.get_sample_value(
        "catalog_verifications_total",
        {"result": result, "reason": "changed on disk", "engine": ""},
    )
    return value or 0.0


def replace(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` and rename it over ``path`` (a new inode)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def register(tmp_path: Path, prov: ModelProvisioner) -> tuple[Path, ModelEntry]:
    """A local model file of PAYLOAD, registered."""
    model = tmp_path / "m.gguf"
    model.write_bytes(PAYLOAD)
    return model, prov.ensure_present_str(f"file:{model}")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def prov(store: CatalogStore, metrics: Metrics) -> ModelProvisioner:
    return ModelProvisioner(store, {"file": FileFetcher()}, metrics=metrics)


class TestLocalFile:
    def test_unchanged_file_is_confirmed_without_a_hash(
        self, tmp_path: Path, prov: ModelProvisioner, metrics: Metrics
    ) -> None:
        """Registration records the file's identity; confirming it reads no byte."""
        _, entry = register(tmp_path, prov)
        assert entry.identity is not None and entry.identity.size == len(PAYLOAD)
        for _ in range(3):
            assert entry == prov.confirm(entry.id)
        assert (0, 0) == (rehashes(metrics, "pass"), rehashes(metrics, "fail"))

    @pytest.mark.parametrize(
        "swap",
        [
            pytest.param(lambda p: replace(p, PAYLOAD[::-1]), id="same-size-new-inode"),
            pytest.param(lambda p: p.write_bytes(PAYLOAD[:-1] + b"x"), id="same-size-in-place"),
            pytest.param(lambda p: replace(p, PAYLOAD[: len(PAYLOAD) // 2]), id="truncated"),
        ],
    )
    def test_replaced_file_is_refused_and_not_hashed_again(
        self, tmp_path: Path, prov: ModelProvisioner, metrics: Metrics, swap: object
    ) -> None:
        """Other bytes at the path: DigestMismatch naming the fix, recorded as a failed
        verification; a second launch refuses it on its identity alone."""
        model, entry = register(tmp_path, prov)
        swap(model)  # type: ignore[operator]
        with pytest.raises(DigestMismatch) as caught:
            prov.confirm(entry.id)
        assert f"llorch models verify {entry.id}" in (caught.value.hint or "")
        assert "INVALID_PARAMS" == caught.value.envelope()["code"]
        stored = prov.store.get(entry.id)
        assert stored is not None and "fail" == stored.verification
        with pytest.raises(DigestMismatch):
            prov.confirm(entry.id)
        assert (0, 1) == (rehashes(metrics, "pass"), rehashes(metrics, "fail"))
        # The registered bytes put back: one hash, then served again.
        replace(model, PAYLOAD)
        confirmed = prov.confirm(entry.id)
        assert confirmed is not None and "pass" == confirmed.verification
        assert confirmed == prov.confirm(entry.id)
        assert (1, 1) == (rehashes(metrics, "pass"), rehashes(metrics, "fail"))

    def test_symlink_swapped_to_another_file_is_refused(
        self, tmp_path: Path, prov: ModelProvisioner
    ) -> None:
        model = tmp_path / "a.gguf"
        model.write_bytes(PAYLOAD)
        other = tmp_path / "b.gguf"
        other.write_bytes(PAYLOAD[::-1])
        link = tmp_path / "served.gguf"
        link.symlink_to(model)
        entry = prov.ensure_present_str(f"file:{link}")
        link.unlink()
        link.symlink_to(other)
        with pytest.raises(DigestMismatch, match="not the file registered"):
            prov.confirm(entry.id)

    def test_touched_file_is_hashed_once(
        self, tmp_path: Path, prov: ModelProvisioner, metrics: Metrics
    ) -> None:
        """Same bytes under a new mtime: one hash passes and records the new identity."""
        model, entry = register(tmp_path, prov)
        os.utime(model, ns=(1_000_000_000, 1_000_000_000))
        prov.confirm(entry.id)
        prov.confirm(entry.id)
        assert (1, 0) == (rehashes(metrics, "pass"), rehashes(metrics, "fail"))

    def test_verify_records_a_failure_the_launch_then_refuses(
        self, tmp_path: Path, prov: ModelProvisioner, metrics: Metrics
    ) -> None:
        model, entry = register(tmp_path, prov)
        replace(model, PAYLOAD[::-1])
        assert "fail" == prov.verify(entry.id).verification
        with pytest.raises(DigestMismatch, match="failed its last verification"):
            prov.confirm(entry.id)
        assert 0 == rehashes(metrics, "fail")


class TestDirectoryAndStaged:
    def test_directory_member_changed_or_added(
        self, tmp_path: Path, prov: ModelProvisioner, metrics: Metrics
    ) -> None:
        folder = tmp_path / "repo"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "weights.bin").write_bytes(PAYLOAD)
        entry = prov.ensure_present_str(f"file:{folder}")
        assert all(f.identity is not None for f in entry.files)
        prov.confirm(entry.id)
        assert 0 == rehashes(metrics, "pass")
        replace(folder / "weights.bin", PAYLOAD[::-1])
        with pytest.raises(DigestMismatch, match=r"weights\.bin"):
            prov.confirm(entry.id)
        replace(folder / "weights.bin", PAYLOAD)
        prov.confirm(entry.id)
        (folder / "extra.bin").write_bytes(b"x")
        with pytest.raises(DigestMismatch, match=r"extra\.bin"):
            prov.confirm(entry.id)

    def test_staged_file_replaced_in_the_store(
        self, store: CatalogStore, https_site: HttpsSite
    ) -> None:
        """A downloaded model whose file under models/ is replaced is refused the same way."""
        https_site.state.files["m.bin"] = PAYLOAD
        metrics = Metrics()
        prov = https_provisioner(store, https_site, metrics=metrics)
        entry = prov.ensure_present_str(f"{https_site.base}/m.bin")
        assert entry.managed and entry.identity is not None
        prov.confirm(entry.id)
        assert 0 == rehashes(metrics, "pass")
        replace(Path(entry.local_path), PAYLOAD[::-1])
        with pytest.raises(DigestMismatch):
            prov.confirm(entry.id)


class TestRegisteringAgain:
    def test_a_changed_file_is_not_answered_with_its_old_digest(
        self, tmp_path: Path, prov: ModelProvisioner
    ) -> None:
        """Registering a file again took the catalog's word for it and answered with the
        digest and size of bytes no longer there; it is now checked like a launch."""
        model, entry = register(tmp_path, prov)
        assert entry == prov.ensure_present_str(f"file:{model}")
        replace(model, PAYLOAD[: len(PAYLOAD) // 2])
        with pytest.raises(DigestMismatch, match="not the file registered"):
            prov.ensure_present_str(f"file:{model}")

    def test_a_pulled_repo_is_confirmed_without_a_hash(
        self, store: CatalogStore, metrics: Metrics
    ) -> None:
        """The identities a pull records survive the move into models/: no launch re-reads
        a repo it just downloaded; a file replaced there is refused."""
        state = HubState()
        files = {"config.json": b"{}", "w/model.safetensors": PAYLOAD}
        state.repos["org/full"] = HubRepo(files=files, lfs={"w/model.safetensors"})
        with serve_in_thread(fake_hf_hub(state)) as port:
            fetcher = HfFetcher(endpoint=f"http://127.0.0.1:{port}")
            prov = ModelProvisioner(store, {"hf": fetcher}, outbound=OPEN, metrics=metrics)
            entry = prov.ensure_present_str("hf:org/full")
        assert 2 == len(entry.files) and entry.managed
        prov.confirm(entry.id)
        assert (0, 0) == (rehashes(metrics, "pass"), rehashes(metrics, "fail"))
        replace(Path(entry.local_path) / "w" / "model.safetensors", PAYLOAD[::-1])
        with pytest.raises(DigestMismatch, match=r"model\.safetensors"):
            prov.confirm(entry.id)


def test_replicas_launching_together_hash_a_changed_file_once(
    tmp_path: Path, prov: ModelProvisioner, metrics: Metrics
) -> None:
    """Each replica of a pool confirms its model before its launch; after a change they all
    hashed the whole file at once. The first hashes it; the others find the identity it
    recorded."""
    import threading

    model = tmp_path / "m.gguf"
    model.write_bytes(b"\1" * (16 << 20))
    entry = prov.ensure_present_str(f"file:{model}")
    os.utime(model, ns=(1_000_000_000, 1_000_000_000))
    start = threading.Barrier(4)

    def launch() -> None:
        start.wait()
        prov.confirm(entry.id)

    threads = [threading.Thread(target=launch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (1, 0) == (rehashes(metrics, "pass"), rehashes(metrics, "fail"))
