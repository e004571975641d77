"""Segments on real files: what is synced to disk, and when."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from llama_orch.artifacts import ArtifactStore
from llama_orch.artifacts._segments import Segments

Identity = tuple[int, int, bool]

#: Stores traces in the background, closes the store, prints their ids and is killed at once:
#: no interpreter shutdown, no thread left to finish anything.
WRITER = """
import json, os, signal, sys
from pathlib import Path
from llama_orch.artifacts import ArtifactStore

store = ArtifactStore(Path(sys.argv[1]), max_bytes=1 << 20)
ids = [
    store.put({"kind": "trace", "content": {"n": n}}, background=True).id for n in range(50)
]
store.close()
print(json.dumps(ids), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def identity(st: os.stat_result) -> Identity:
    """A file or folder as the kernel knows it: (device, inode, is a folder)."""
    return st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode)


class RecordedFsync:
    """``os.fsync`` that also notes which file or folder each call made durable."""

    def __init__(self) -> None:
        self.synced: list[Identity] = []

    def __call__(self, fd: int) -> None:
        os.fsync(fd)
        self.synced.append(identity(os.fstat(fd)))


def record(n: int) -> tuple[str, bytes]:
    ident = f"{n:064x}"
    return ident, b'{"ref":{"id":"' + ident.encode() + b'"},"document":{"n":%d}}' % n


class TestDurability:
    def test_each_segment_is_synced_with_its_folder_before_close_returns(
        self, tmp_path: Path
    ) -> None:
        """A segment's bytes are synced before its rename and its name after it (and the new
        traces/ folder's name in its parent), once per segment, so what close() reported as
        written survives a power loss; a new instance reads every record back."""
        fsync = RecordedFsync()
        folder = tmp_path / "traces"
        segments = Segments(folder, sync=fsync)
        for n in range(3):
            segments.add(*record(n))
        segments.close()
        segments.add(*record(3))
        segments.close()

        files = sorted(folder.glob("*.seg"))
        assert ["000000000000.seg", "000000000001.seg"] == [p.name for p in files]
        here, seg0, seg1 = (identity(os.stat(p)) for p in (folder, *files))
        parent = identity(os.stat(tmp_path))
        assert [parent, seg0, here, seg1, here] == fsync.synced
        assert [record(n)[1] for n in range(4)] == list(Segments(folder).load())

    def test_a_batch_deleted_before_it_is_written_syncs_nothing(self, tmp_path: Path) -> None:
        fsync = RecordedFsync()
        segments = Segments(tmp_path / "traces", delay_s=60.0, sync=fsync)
        ident, data = record(0)
        segments.add(ident, data)
        segments.remove(ident)
        segments.close()
        assert [] == fsync.synced
        assert not (tmp_path / "traces").exists()

    def test_what_close_returned_for_is_read_back_by_a_new_process(self, tmp_path: Path) -> None:
        """A process killed right after close() leaves every trace it stored readable."""
        done = subprocess.run(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert -signal.SIGKILL == done.returncode, done.stderr
        ids = json.loads(done.stdout)
        store = ArtifactStore(tmp_path, max_bytes=1 << 20)
        assert sorted(ids) == sorted(ref["id"] for ref in store.refs())
        assert list(range(50)) == [store.get(i)["content"]["n"] for i in ids]


class TestSyncedPuts:
    async def test_an_api_put_is_synced_before_it_returns(self, tmp_path: Path) -> None:
        """``put_synced`` (the API's) returns once the document, its ref and their folder are
        synced: the document's bytes, the ref's, then the folder holding both names."""
        fsync = RecordedFsync()
        store = ArtifactStore(tmp_path, max_bytes=1 << 20, sync=fsync)
        stored = await store.put_synced({"kind": "plan", "content": {"steps": ["a"]}})
        folder = tmp_path / stored.id[:2]
        doc, ref = folder / f"{stored.id}.json", folder / f"{stored.id}.ref"
        expected = [identity(os.stat(p)) for p in (doc, ref, folder)]
        assert stored.created and expected == fsync.synced
        assert {"steps": ["a"]} == ArtifactStore(tmp_path, max_bytes=1 << 20).get(stored.id)[
            "content"
        ]

    async def test_identical_puts_at_once_create_one_artifact(self, tmp_path: Path) -> None:
        store = ArtifactStore(tmp_path, max_bytes=1 << 20)
        document = {"kind": "plan", "content": "same"}
        results = await asyncio.gather(*(store.put_synced(dict(document)) for _ in range(8)))
        assert 1 == sum(r.created for r in results)
        assert 1 == len({r.id for r in results})
