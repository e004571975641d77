"""file: refs (never networked), re-verification, lifecycle, and the policies on their own."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from llama_orch.catalog import CatalogStore, Lifecycle, parse_ref
from llama_orch.catalog.refs import FileRef
from llama_orch.catalog.verify import VerifyResult
from llama_orch.config import Config
from llama_orch.errors import (
    InvalidParams,
    ModelDeprecated,
    NotFound,
    OutboundDenied,
    UntrustedArtifact,
)
from llama_orch.observability.metrics import Metrics
from llama_orch.provisioners.factory import catalog_root, model_provisioner
from llama_orch.provisioners.fetch.file import FileFetcher
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.policy import OutboundPolicy, TrustPolicy
from llama_orch.provisioners.progress import PullState
from tests.support.gguf_files import tiny_llama_gguf


def file_only(store: CatalogStore, **kw: object) -> ModelProvisioner:
    return ModelProvisioner(store, {"file": FileFetcher()}, **kw)  # type: ignore[arg-type]


class TestFileRefs:
    def test_local_file_registered_in_place(self, tmp_path: Path, store: CatalogStore) -> None:
        """A file: ref is registered where it lies (unmanaged), with its GGUF header."""
        model = tiny_llama_gguf(tmp_path / "m.gguf")
        entry = file_only(store).ensure_present_str("m.gguf", base_dir=str(tmp_path))
        assert (f"file:{model}", str(model), False) == (entry.id, entry.local_path, entry.managed)
        assert entry.gguf is not None and 2 == entry.gguf.block_count
        assert store.delete(entry.id).found
        assert model.exists()

    def test_a_pull_that_finds_the_model_present_ends_done(
        self, tmp_path: Path, store: CatalogStore
    ) -> None:
        """A background pull whose model turned up meanwhile (another pull of it, a pool
        starting on it) returned at once but left its progress running for good, so the
        catalog answered every delete of the model with "being pulled"."""
        model = tiny_llama_gguf(tmp_path / "m.gguf")
        prov = file_only(store)
        prov.ensure_present_str(f"file:{model}")
        progress = prov.start_pull(parse_ref(f"file:{model}"))
        ended = threading.Event()
        for _ in range(1000):  # the pull runs in its own thread; bounded wait for its end
            if progress.state is not PullState.RUNNING:
                break
            ended.wait(0.01)
        assert PullState.DONE is progress.state

    def test_missing_file_is_not_found(self, tmp_path: Path, store: CatalogStore) -> None:
        """A file: ref to nothing is NOT_FOUND naming the path."""
        with pytest.raises(NotFound, match=r"nothing\.gguf"):
            file_only(store).ensure_present_str(f"file:{tmp_path}/nothing.gguf")

    def test_huge_directory_is_refused_before_hashing(
        self, tmp_path: Path, store: CatalogStore
    ) -> None:
        """A directory with more entries than a model has (a home, /) is INVALID_PARAMS."""
        for name in ("a", "b", "c"):
            (tmp_path / name).write_bytes(b"x")
        prov = ModelProvisioner(store, {"file": FileFetcher(max_directory_entries=2)})
        with pytest.raises(InvalidParams, match="more than 2 entries"):
            prov.ensure_present_str(f"file:{tmp_path}")
        assert [] == store.list()

    def test_unreadable_directory_is_refused(self, tmp_path: Path, store: CatalogStore) -> None:
        """An entry the server cannot read makes a typed refusal naming it, not a crash."""
        locked = tmp_path / "model" / "locked"
        locked.mkdir(parents=True)
        (locked / "w.bin").write_bytes(b"x")
        locked.chmod(0)
        try:
            if os.access(locked, os.R_OK):
                pytest.skip("root ignores directory permissions")
            with pytest.raises(InvalidParams, match="cannot be read"):
                file_only(store).ensure_present_str(f"file:{tmp_path / 'model'}")
        finally:
            locked.chmod(0o755)

    def test_network_scheme_without_fetcher_is_refused(self, store: CatalogStore) -> None:
        """The file-only provisioner refuses network refs instead of reaching out."""
        with pytest.raises(InvalidParams, match="no fetcher"):
            file_only(store).ensure_present_str("hf:org/repo/m.gguf")


class TestLocalRootsOnTheOpenedFile:
    """``catalog.local_roots`` holds for the file actually read, not only for the path checked
    when the request came in: a link swapped in after that check reads as the link it is."""

    def bounded(self, tmp_path: Path) -> tuple[Path, Path]:
        root = tmp_path / "root"
        root.mkdir()
        secret = tmp_path / "secret.txt"
        secret.write_text("password=hunter2\n")
        return root, secret

    def test_a_link_out_of_the_roots_is_refused_when_opened(
        self, tmp_path: Path, store: CatalogStore
    ) -> None:
        """The ref's path passed the request's check (a file then); the link now there is
        refused naming the key, and nothing is registered."""
        root, secret = self.bounded(tmp_path)
        (root / "m.gguf").symlink_to(secret)
        ref = FileRef(str(root / "m.gguf"), within=(str(root),))
        with pytest.raises(InvalidParams, match=r"outside catalog\.local_roots"):
            file_only(store).ensure_present(ref)
        assert [] == store.list()

    def test_a_model_directory_member_linking_out_is_refused_when_opened(
        self, tmp_path: Path, store: CatalogStore
    ) -> None:
        """A file of a model directory that became a link out of the roots after the request
        was checked is refused too: no digest or size of it is recorded."""
        root, secret = self.bounded(tmp_path)
        model = root / "model"
        model.mkdir()
        tiny_llama_gguf(model / "m.gguf")
        (model / "notes.txt").symlink_to(secret)
        with pytest.raises(InvalidParams, match=r"notes\.txt is outside catalog\.local_roots"):
            file_only(store).ensure_present(FileRef(str(model), within=(str(root),)))
        assert [] == store.list()

    def test_the_bytes_hashed_are_those_of_the_checked_file(
        self, tmp_path: Path, store: CatalogStore
    ) -> None:
        """A link swapped in once the file is open and checked changes nothing that is read:
        digest, size and header are the checked file's."""
        root, secret = self.bounded(tmp_path)
        model = tiny_llama_gguf(root / "m.gguf")
        data = model.read_bytes()

        def swap(path: Path) -> None:
            path.unlink()
            path.symlink_to(secret)

        prov = ModelProvisioner(store, {"file": FileFetcher(opened=swap)})
        entry = prov.ensure_present(FileRef(str(model), within=(str(root),)))
        assert "sha256:" + hashlib.sha256(data).hexdigest() == entry.digest
        assert len(data) == entry.size_bytes
        assert entry.gguf is not None and "llama" == entry.gguf.architecture


class TestVerifyAndState:
    def test_reverify_detects_changed_bytes(self, tmp_path: Path, store: CatalogStore) -> None:
        """verify() passes on intact bytes and fails once they change."""
        path = tmp_path / "w.bin"
        path.write_bytes(b"abc")
        prov = file_only(store, metrics=Metrics())
        digest = "sha256:" + hashlib.sha256(b"abc").hexdigest()
        entry = prov.ensure_present_str(f"file:{path}", digest)
        assert "pass" == prov.verify(entry.id).verification
        path.write_bytes(b"abd")
        assert "fail" == prov.verify(entry.id).verification

    def test_retire_sets_metric_and_refuses(self, tmp_path: Path, store: CatalogStore) -> None:
        """A Retired model raises MODEL_DEPRECATED and model_state follows the change."""
        (tmp_path / "w.bin").write_bytes(b"abc")
        metrics = Metrics()
        prov = file_only(store, metrics=metrics)
        entry = prov.ensure_present_str(f"file:{tmp_path}/w.bin")
        prov.set_state(entry.id, Lifecycle.RETIRED)
        with pytest.raises(ModelDeprecated):
            prov.require_active(entry.id)
        text = metrics.render().decode()
        assert f'model_state{{model_id="{entry.id}",state="Retired"}} 1.0' in text
        assert f'model_state{{model_id="{entry.id}",state="Active"}} 0.0' in text


class TestPolicies:
    def test_scheme_not_allowed(self) -> None:
        """With outbound on, a scheme outside allowed_schemes names that key."""
        with pytest.raises(OutboundDenied, match="allowed_schemes"):
            OutboundPolicy(True, (), ("https",)).check("s3", "minio.lan")

    def test_file_always_allowed(self) -> None:
        """file needs no network and passes even the default (closed) policy."""
        OutboundPolicy().check("file", "")

    def test_strict_requires_verifier_for_signature(self) -> None:
        """Requiring a signature with no verifier refuses under strict, warns otherwise."""
        with pytest.raises(UntrustedArtifact, match="signature"):
            TrustPolicy("strict", require_signature=True).decide(VerifyResult.PASS, "m")
        lenient = TrustPolicy("permissive", require_signature=True)
        assert VerifyResult.WARN == lenient.decide(VerifyResult.PASS, "m").result


class TestFactory:
    def test_builds_from_config(self, tmp_path: Path) -> None:
        """The config's catalog root, policies and endpoints reach the provisioner."""
        config = Config.model_validate(
            {
                "catalog": {"root": str(tmp_path / "c"), "trust_policy": {"mode": "strict"}},
                "network_policy": {"allow_outbound": True, "allowed_schemes": ["https"]},
                "pools": [{"id": "p", "engine": "mock", "model": "m"}],
            }
        )
        prov = model_provisioner(config, {"HF_ENDPOINT": "http://127.0.0.1:9"})
        assert tmp_path / "c" == prov.store.root
        assert "strict" == prov.trust.mode
        assert ("https",) == prov.outbound.allowed_schemes
        default = Config.model_validate({"pools": [{"id": "p", "engine": "mock", "model": "m"}]})
        assert Path("/x/llama-orch/catalog") == catalog_root(default, {"XDG_CACHE_HOME": "/x"})


class TestProgress:
    def test_milestones_are_narrated_once_each(self, narration) -> None:
        """Progress is narrated at 25/50/75 percent, not per chunk; the snapshot has rate/ETA."""
        from llama_orch.provisioners.progress import PullProgress

        progress = PullProgress("hf:o/m")
        progress.set_total(1000)
        for _ in range(100):
            progress.add(10)
        events = narration.events("fetch-progress")
        assert ["25%", "50%", "75%"] == [e["human"].split()[1] for e in events]
        snapshot = progress.snapshot()
        assert (1000, 1000, "running") == (
            snapshot["bytes_done"],
            snapshot["bytes_total"],
            snapshot["state"],
        )
        assert snapshot["eta_s"] == 0.0
