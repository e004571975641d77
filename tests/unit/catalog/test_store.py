"""The filesystem catalog: atomic indexes, lifecycle, lookups, traversal; the engine index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llama_orch.catalog import (
    CatalogStore,
    Lifecycle,
    ModelEntry,
    default_catalog_root,
    parse_ref,
)
from llama_orch.catalog.store import check_tree, safe_join
from llama_orch.errors import IndexVersionError, InvalidModelRef, NotFound, StorageUnwritable
from llama_orch.provisioners.engine import EngineEntry, FileEngineIndex, ProvisionError
from tests.support.disks import filled, small_tmpfs


def entry(store: CatalogStore, model_id: str, *, payload: bytes = b"x") -> ModelEntry:
    directory = store.model_dir(model_id)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "m.gguf").write_bytes(payload)
    return ModelEntry(id=model_id, ref=model_id, local_path=str(directory / "m.gguf"))


class TestIndex:
    def test_put_get_list_round_trip_through_disk(self, tmp_path: Path) -> None:
        """Entries survive a new store instance on the same root, sorted by id."""
        store = CatalogStore(tmp_path)
        store.put(entry(store, "hf:o/b"))
        store.put(entry(store, "hf:o/a"))
        again = CatalogStore(tmp_path)
        assert ["hf:o/a", "hf:o/b"] == [e.id for e in again.list()]
        assert 1 == json.loads((tmp_path / "models.json").read_text())["version"]

    def test_incompatible_version_is_a_typed_error(self, tmp_path: Path) -> None:
        """An index of another schema version is refused, naming both versions."""
        (tmp_path / "models.json").write_text('{"version": 99, "models": []}')
        with pytest.raises(IndexVersionError, match="version 99"):
            CatalogStore(tmp_path).list()

    def test_the_engine_index_is_the_engine_provisioners_own(self, tmp_path: Path) -> None:
        """engines.json shares the catalog root: what the engine provisioner writes there
        survives the model catalog's writes and recovery and reads back whole. The catalog
        once also wrote engines.json itself, as a list its writer cannot read: an index of that
        shape is now a typed error naming the file, not a crash."""
        engines = FileEngineIndex(tmp_path)
        built = EngineEntry(
            id="llamacpp:b1@sha256:1", engine="llamacpp", version="b1", artifacts=["bin/x"]
        )
        engines.put(built)
        store = CatalogStore(tmp_path)
        store.put(entry(store, "hf:o/a"))
        assert [] == store.recover()
        assert built == engines.get(built.id)
        assert [built] == FileEngineIndex(tmp_path).list(engine="llamacpp")
        listed = {"version": 1, "engines": [{"id": "vllm:0.6", "engine": "vllm"}]}
        (tmp_path / "engines.json").write_text(json.dumps(listed))
        with pytest.raises(ProvisionError, match=r"engines\.json is not an engine index"):
            engines.list()
        (tmp_path / "engines.json").write_text('{"version": 1, "engines": {"x": {"id": 1}}}')
        with pytest.raises(ProvisionError, match=r"engines\.json is not an engine index"):
            engines.get("x")

    def test_concurrent_readers_never_see_a_torn_index(self, tmp_path: Path) -> None:
        """A reader process parsing the index while writers replace it always gets valid JSON."""
        store = CatalogStore(tmp_path)
        store.put(entry(store, "hf:o/seed"))
        stop = tmp_path / "stop"
        reader = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import json,os,sys\n"
                "n=0\n"
                f"while not os.path.exists({str(stop)!r}):\n"
                f"    d=json.load(open({str(tmp_path / 'models.json')!r}))\n"
                "    assert d['version']==1 and d['models']\n"
                "    n+=1\n"
                "print(n)\n",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )

        def write(prefix: str) -> None:
            for index in range(40):
                store.put(ModelEntry(id=f"hf:o/{prefix}{index}", ref="r", local_path="/x" * 200))

        writers = [threading.Thread(target=write, args=(p,)) for p in "ab"]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        stop.touch()
        out, _ = reader.communicate(timeout=30)
        assert 0 == reader.returncode
        assert int(out) > 0
        assert 81 == len(CatalogStore(tmp_path).list())


class TestLifecycle:
    def test_set_state_and_missing(self, tmp_path: Path) -> None:
        """set_state changes lifecycle; an unknown id is NOT_FOUND."""
        store = CatalogStore(tmp_path)
        store.put(entry(store, "hf:o/m"))
        assert Lifecycle.RETIRED == store.set_state("hf:o/m", Lifecycle.RETIRED).lifecycle
        with pytest.raises(NotFound):
            store.set_state("hf:o/none", Lifecycle.ACTIVE)

    def test_delete_removes_entry_and_artifacts(self, tmp_path: Path) -> None:
        """Delete drops the entry and the owned directory; deleting again reports not found."""
        store = CatalogStore(tmp_path)
        put = store.put(entry(store, "hf:o/m"))
        outcome = store.delete("hf:o/m")
        assert (True, None) == (outcome.found, outcome.problem)
        assert not Path(put.local_path).exists()
        assert not store.delete("hf:o/m").found

    @pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
    def test_delete_stays_consistent_when_removal_fails(self, tmp_path: Path) -> None:
        """When artifacts cannot be moved, the entry is still gone and the problem reported."""
        store = CatalogStore(tmp_path)
        store.put(entry(store, "hf:o/m"))
        store.models_dir.chmod(0o500)
        try:
            outcome = store.delete("hf:o/m")
        finally:
            store.models_dir.chmod(0o700)
        assert outcome.found and outcome.problem
        assert store.get("hf:o/m") is None

    def test_a_delete_the_full_disk_refuses_keeps_entry_and_files(self, tmp_path: Path) -> None:
        """The files are moved aside before the index is written: when the disk then refuses
        the index write, they go back, so the entry that stays still names its bytes."""
        with small_tmpfs(tmp_path / "disk") as disk:
            store = CatalogStore(disk / "catalog")
            put = store.put(entry(store, "hf:o/m", payload=b"weights"))
            with filled(disk), pytest.raises(StorageUnwritable) as info:
                store.delete("hf:o/m")
            assert "No space left on device" in info.value.message
            assert put == store.get("hf:o/m")
            assert b"weights" == Path(put.local_path).read_bytes()
            assert [] == list(store.trash_dir.iterdir())

    def test_delete_reports_unremovable_artifacts(self, tmp_path: Path) -> None:
        """A trash directory that cannot be created is reported; the index stays consistent."""
        store = CatalogStore(tmp_path)
        store.put(entry(store, "hf:o/m"))
        store.trash_dir.parent.mkdir(exist_ok=True)
        store.trash_dir.write_text("a file where the trash directory should be")
        outcome = store.delete("hf:o/m")
        assert outcome.found and "could not move" in (outcome.problem or "")
        assert store.get("hf:o/m") is None


class TestLookups:
    def test_locate_and_exists_accept_any_spelling(self, tmp_path: Path) -> None:
        """locate finds by normalized id; exists takes an id or another spelling of the ref."""
        store = CatalogStore(tmp_path)
        store.put(entry(store, "https://h.io/m.gguf"))
        assert store.locate(parse_ref("HTTPS://H.IO/m.gguf?sig=1")) is not None
        assert store.exists("https://h.io:443/m.gguf")
        assert not store.exists("hf:o/other")
        assert not store.exists("not a ref")

    def test_locate_ignores_entries_whose_bytes_are_gone(self, tmp_path: Path) -> None:
        """locate never returns a path that does not exist."""
        store = CatalogStore(tmp_path)
        put = store.put(entry(store, "hf:o/m"))
        Path(put.local_path).unlink()
        assert store.locate(parse_ref("hf:o/m")) is None

    def test_default_root_is_xdg_aware(self) -> None:
        """The default root follows XDG_CACHE_HOME, else ~/.cache."""
        assert Path("/x/llama-orch/catalog") == default_catalog_root({"XDG_CACHE_HOME": "/x"})
        assert Path("/h/.cache/llama-orch/catalog") == default_catalog_root({"HOME": "/h"})


class TestTraversal:
    @pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "a//b", "a\\..\\b"])
    def test_remote_names_cannot_escape(self, tmp_path: Path, name: str) -> None:
        """A file name from a source that would leave the staging directory is refused."""
        with pytest.raises(InvalidModelRef):
            safe_join(tmp_path, name)

    def test_symlink_out_of_tree_is_refused(self, tmp_path: Path) -> None:
        """A staged tree with a symlink pointing outside it is refused."""
        (tmp_path / "stage").mkdir()
        (tmp_path / "stage" / "evil").symlink_to("/etc")
        with pytest.raises(InvalidModelRef, match="links outside"):
            check_tree(tmp_path / "stage")
