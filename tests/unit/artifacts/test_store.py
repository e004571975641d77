"""ArtifactStore and TraceWriter on real files in a temporary directory."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from llama_orch.artifacts import (
    OFF_LOOP_BYTES,
    ArtifactStore,
    TraceWriter,
    artifact_id,
    canonical_json,
)
from llama_orch.errors import InvalidParams, NotFound, PayloadTooLarge

PLAN = {"kind": "plan", "tags": ["project:demo"], "content": {"steps": ["a", "b"]}}


def store_at(root: Path, max_bytes: int = 10_000, *, since_ms: int = 1_000) -> ArtifactStore:
    ticks = iter(range(since_ms, since_ms + 100_000))
    return ArtifactStore(root, max_bytes=max_bytes, clock_ms=lambda: next(ticks))


class TestArtifactStore:
    def test_id_is_the_sha256_of_canonical_json(self, tmp_path: Path) -> None:
        """Key order and whitespace do not change the id; the digest names the same hash."""
        stored = store_at(tmp_path).put(PLAN)
        reordered = json.loads(json.dumps(PLAN, indent=2, sort_keys=False))
        expected = hashlib.sha256(
            json.dumps(PLAN, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        assert (expected, expected) == (stored.id, artifact_id(reordered))
        assert f"sha256:{expected}" == stored.ref["digest"]
        assert canonical_json(PLAN) == canonical_json(dict(reversed(list(PLAN.items()))))

    def test_resubmission_returns_the_same_ref(self, tmp_path: Path) -> None:
        """Storing the same document twice creates it once and returns the first ref."""
        store = store_at(tmp_path)
        first, second = store.put(PLAN), store.put(dict(PLAN))
        assert (True, False) == (first.created, second.created)
        assert first.ref == second.ref

    def test_get_round_trips_and_survives_a_new_store(self, tmp_path: Path) -> None:
        """What was stored is read back, also by a store opened later on the same directory."""
        ident = store_at(tmp_path).put(PLAN).id
        found = store_at(tmp_path).get(ident)
        assert (PLAN["content"], ["project:demo"], "plan") == (
            found["content"],
            found["tags"],
            found["kind"],
        )

    def test_writes_leave_no_temporary_files(self, tmp_path: Path) -> None:
        """Every write is a rename of a finished file: only .json and .ref files remain."""
        store = store_at(tmp_path)
        for n in range(5):
            store.put({**PLAN, "content": {"n": n}})
        names = [p.name for p in tmp_path.rglob("*") if p.is_file()]
        assert 10 == len(names)
        assert all(n.endswith((".json", ".ref")) and not n.startswith(".tmp") for n in names)

    def test_size_limit(self, tmp_path: Path) -> None:
        """A document over the limit as canonical JSON is refused, naming the setting."""
        with pytest.raises(PayloadTooLarge, match="artifact_max_bytes"):
            store_at(tmp_path, max_bytes=100).put({**PLAN, "content": {"x": "y" * 200}})

    @pytest.mark.parametrize("ident", ["../../etc/passwd", "A" * 64, "ab", "0" * 63 + "/"])
    def test_ids_that_are_not_hashes_are_refused(self, tmp_path: Path, ident: str) -> None:
        """Only 64 lowercase hex characters ever reach a path."""
        with pytest.raises(InvalidParams, match="64 lowercase hex"):
            store_at(tmp_path).get(ident)

    @pytest.mark.parametrize("tag", ["../x", "a/b", "a..b", ".hidden", "x" * 129, ""])
    def test_tags_that_could_be_paths_are_refused(self, tmp_path: Path, tag: str) -> None:
        with pytest.raises(InvalidParams, match="tag"):
            store_at(tmp_path).put({**PLAN, "tags": [tag]})

    def test_integers_beyond_64_bits_are_refused(self, tmp_path: Path) -> None:
        """A number canonical JSON cannot carry is a typed refusal, not a crash."""
        with pytest.raises(InvalidParams, match="canonical JSON"):
            store_at(tmp_path).put({**PLAN, "content": {"n": 2**80}})

    def test_background_writes_serve_at_once_and_land_in_order(self, tmp_path: Path) -> None:
        """A background put is readable at once; once flushed it is one record of a shared
        segment file, readable by a store opened later, and a delete queued after it is kept."""
        store = store_at(tmp_path)
        kept = store.put(PLAN, background=True).id
        gone = store.put({**PLAN, "content": {"n": 1}}, background=True).id
        store.delete(gone)
        assert PLAN["content"] == store.get(kept)["content"]
        with pytest.raises(NotFound):
            store.get(gone)
        store.close()
        assert ["000000000000.seg"] == sorted(p.name for p in tmp_path.rglob("*.*"))
        later = store_at(tmp_path)
        assert PLAN["content"] == later.get(kept)["content"]
        assert [kept] == [r["id"] for r in later.refs()]
        assert PLAN["content"] == store.get(kept)["content"]

    def test_a_segment_file_goes_when_its_last_record_is_deleted(self, tmp_path: Path) -> None:
        """Background records share files; deleting all of one batch removes its file, and
        a new store keeps numbering after the segments it finds."""
        store = store_at(tmp_path)
        first = [store.put({**PLAN, "content": {"n": n}}, background=True).id for n in range(3)]
        store.close()
        second = store.put({**PLAN, "content": {"n": 3}}, background=True).id
        store.close()
        assert 2 == len(list(tmp_path.rglob("*.seg")))
        for ident in first[:2]:
            store.delete(ident)
        store.close()
        assert 2 == len(list(tmp_path.rglob("*.seg")))
        store.delete(first[2])
        store.close()
        assert ["000000000001.seg"] == [p.name for p in tmp_path.rglob("*.seg")]
        later = store_at(tmp_path)
        assert [second] == [r["id"] for r in later.refs()]
        later.put({**PLAN, "content": {"n": 4}}, background=True)
        later.close()
        names = sorted(p.name for p in tmp_path.rglob("*.seg"))
        assert ["000000000001.seg", "000000000002.seg"] == names

    async def test_fetch_reads_large_artifacts_off_the_event_loop(self, tmp_path: Path) -> None:
        """A large artifact is read, re-hashed and rendered in a worker thread, whether its
        file or a trace segment holds it; a small one stays on the loop's thread."""
        store = store_at(tmp_path, max_bytes=4 * OFF_LOOP_BYTES)
        big = {"kind": "trace", "content": {"text": "x" * OFF_LOOP_BYTES}}
        small = store.put(PLAN).id
        in_file = store.put(big).id
        in_segment = store.put({**big, "tags": ["s"]}, background=True).id
        threads: list[int] = []

        def render(found: dict[str, object]) -> bytes:
            threads.append(threading.get_ident())
            return json.dumps(found["content"]).encode()

        small_body = await store.fetch(small, render)
        bodies = [await store.fetch(ident, render) for ident in (in_file, in_segment)]
        loop_thread = threading.get_ident()
        assert [True, False, False] == [t == loop_thread for t in threads]
        assert json.loads(small_body) == PLAN["content"]
        assert all(json.loads(b) == big["content"] for b in bodies)
        store.close()

    async def test_fetch_sets_a_damaged_large_artifact_aside(self, tmp_path: Path) -> None:
        """A large artifact whose file no longer hashes to its id answers not found, saying
        so, and leaves the index, as a small one does."""
        store = store_at(tmp_path, max_bytes=4 * OFF_LOOP_BYTES)
        ident = store.put({"kind": "trace", "content": {"text": "x" * OFF_LOOP_BYTES}}).id
        path = tmp_path / ident[:2] / f"{ident}.json"
        path.write_bytes(path.read_bytes().replace(b"xxxx", b"yyyy", 1))
        with pytest.raises(NotFound, match="damaged on disk"):
            await store.fetch(ident, lambda found: b"")
        with pytest.raises(NotFound, match="unknown"):
            store.get(ident)

    def test_unknown_id_is_not_found(self, tmp_path: Path) -> None:
        with pytest.raises(NotFound):
            store_at(tmp_path).get("0" * 64)

    def test_pages_by_tag_in_creation_order(self, tmp_path: Path) -> None:
        """Listing by tag pages through matching refs in creation order, then stops."""
        store = store_at(tmp_path)
        ids = [store.put({**PLAN, "content": {"n": n}}).id for n in range(5)]
        store.put({"kind": "other", "tags": ["elsewhere"], "content": {}})
        first, cursor = store.page("project:demo", limit=2, after=None)
        second, cursor2 = store.page("project:demo", limit=2, after=cursor)
        last, end = store.page("project:demo", limit=2, after=cursor2)
        assert ids == [r["id"] for r in first + second + last]
        assert end is None
        assert 6 == len(store_at(tmp_path))


class TestTraceWriter:
    FIELDS = {
        "task_id": "t-1",
        "session_id": "s-1",
        "engine": "mock",
        "engine_version": "mock-1.0",
        "pool_id": "p0",
        "replica_id": "r0",
    }
    TRANSCRIPT = b'event: token\ndata: {"t":"hi","i":0}\n\n'

    def test_stores_the_transcript_with_tags_and_metadata(self, tmp_path: Path) -> None:
        """The trace holds the SSE text up to its terminal frame, tagged and described."""
        store = store_at(tmp_path)
        ident = TraceWriter(store, retention=10)(
            {**self.FIELDS}, self.TRANSCRIPT, ("end", {"tokens_out": 1})
        )
        assert ident is not None
        trace = store.get(ident)
        assert ["sse", "stream", "task:t-1", "session:s-1"] == trace["tags"]
        assert ("mock", "mock-1.0", "p0", "r0") == tuple(
            trace["metadata"][k] for k in ("engine", "engine_version", "pool_id", "replica_id")
        )
        expected = 'event: token\ndata: {"t":"hi","i":0}\n\nevent: end\ndata: {"tokens_out":1}\n\n'
        assert expected == trace["content"]["transcript"]

    def test_retention_keeps_the_newest_traces(self, tmp_path: Path) -> None:
        """Past the retention the oldest trace is deleted; other kinds are never pruned."""
        store = store_at(tmp_path)
        plan = store.put(PLAN).id
        writer = TraceWriter(store, retention=2)
        ids = [
            writer({**self.FIELDS, "task_id": f"t-{n}"}, self.TRANSCRIPT, ("end", {}))
            for n in range(3)
        ]
        with pytest.raises(NotFound):
            store.get(str(ids[0]))
        assert [plan, ids[1], ids[2]] == [r["id"] for r in store.refs()]

    def test_retention_holds_across_a_restart(self, tmp_path: Path) -> None:
        """Traces pruned from a segment that still holds newer ones come back with a new
        store, and the next trace stored prunes them again, oldest first."""
        store = store_at(tmp_path)
        writer = TraceWriter(store, retention=2)
        fields = [{**self.FIELDS, "task_id": f"t-{n}"} for n in range(4)]
        ids = [writer(f, self.TRANSCRIPT, ("end", {})) for f in fields[:2]]
        assert ids == [r["id"] for r in store.refs()]  # as many as the retention, not one less
        store.close()  # both in one segment
        ids.append(writer(fields[2], self.TRANSCRIPT, ("end", {})))
        store.close()  # the first pruned in memory, still in its segment beside the second
        assert [ids[1], ids[2]] == [r["id"] for r in store.refs()]
        later = store_at(tmp_path, since_ms=200_000)
        assert ids == [r["id"] for r in later.refs()]
        newest = TraceWriter(later, retention=2)(fields[3], self.TRANSCRIPT, ("end", {}))
        assert [ids[2], newest] == [r["id"] for r in later.refs()]
        for gone in ids[:2]:
            with pytest.raises(NotFound):
                later.get(str(gone))

    def test_zero_retention_stores_nothing(self, tmp_path: Path) -> None:
        store = store_at(tmp_path)
        assert TraceWriter(store, retention=0)(self.FIELDS, self.TRANSCRIPT, ("end", {})) is None
        assert 0 == len(store)


def test_pages_by_tag_match_the_refs_in_order_through_deletes_and_a_reload(
    tmp_path: Path,
) -> None:
    """Pages, with or without a tag, walk exactly the refs in creation order, skipping deleted
    ones and going on from a deleted cursor, before and after the index is read anew."""
    store = store_at(tmp_path)
    ids = [
        store.put({"kind": "plan", "tags": [f"t{n % 3}", "all", "all"], "content": {"n": n}}).id
        for n in range(20)
    ]
    for gone in ids[4:9]:
        store.delete(gone)

    def walk(s: ArtifactStore, tag: str | None, cursor: str | None = None) -> list[str]:
        seen: list[str] = []
        while True:
            items, cursor = s.page(tag, limit=2, after=cursor)
            seen += [r["id"] for r in items]
            if cursor is None:
                return seen

    reloaded = store_at(tmp_path, since_ms=500_000)
    for s in (store, reloaded):
        for tag in (None, "all", "t0", "t1", "t2", "none"):
            assert [r["id"] for r in s.refs(tag)] == walk(s, tag)
    # A cursor deleted meanwhile: the walk goes on after where it stood.
    assert [r["id"] for r in store.refs("t2")][1:] == walk(store, "t2", ids[5])
