"""The engine index (engines.json) under concurrent writers and a disk that refuses writes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from llama_orch.provisioners.engine import (
    EngineEntry,
    FileEngineIndex,
    ProvisionContext,
    ProvisionError,
    provider_for,
)
from tests.support.pools import llamacpp_pool

WRITER = """
import sys
from pathlib import Path
from llama_orch.provisioners.engine import EngineEntry, FileEngineIndex
index = FileEngineIndex(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    index.put(EngineEntry(id=f"{sys.argv[2]}-{i}", engine="llamacpp", version=str(i), artifacts=[]))
"""


def test_two_processes_recording_engines_lose_none(tmp_path: Path) -> None:
    """Two llama-orch processes sharing a catalog root record engines at once: every entry of
    both is in the index afterwards (each read-modify-write holds the catalog's lock)."""
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name, "40"])
        for name in ("a", "b")
    ]
    assert [0, 0] == [w.wait(timeout=60) for w in writers]
    assert 80 == len(FileEngineIndex(tmp_path).list())
    assert [".lock", "engines.json"] == sorted(p.name for p in tmp_path.iterdir())


def test_an_unwritable_index_is_a_provision_error(tmp_path: Path) -> None:
    """A catalog root the engine index cannot be written in fails the record step, naming the
    file, rather than escaping as an OSError."""
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    index = FileEngineIndex(blocked / "catalog")
    with pytest.raises(ProvisionError) as caught:
        index.put(EngineEntry(id="x", engine="llamacpp", version="1", artifacts=[]))
    assert "record" == caught.value.step
    assert str(blocked / "catalog") in caught.value.message


@pytest.mark.parametrize(
    "content",
    [b'{"version": 1, "engines": {', b"\xff\xfe garbage", b"[]", b'{"version": 99}'],
    ids=["truncated", "binary", "list", "future"],
)
def test_an_unreadable_index_says_to_move_it_aside(tmp_path: Path, content: bytes) -> None:
    """A truncated, binary, foreign or future engines.json fails naming the file and what to
    do about it, and is left as it was (never overwritten)."""
    (tmp_path / "engines.json").write_bytes(content)
    with pytest.raises(ProvisionError) as caught:
        FileEngineIndex(tmp_path).put(
            EngineEntry(id="x", engine="llamacpp", version="1", artifacts=[])
        )
    assert str(tmp_path / "engines.json") in caught.value.message
    assert "move the file aside" in caught.value.message
    assert content == (tmp_path / "engines.json").read_bytes()


HOLDER = """
import fcntl, select, sys
with open(sys.argv[1], "a+b") as lock:
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
    print("held", flush=True)
    # Released when the test says so; the timeout only keeps a build whose put blocks the
    # event loop (and so never lets the test say so) from hanging instead of failing.
    select.select([sys.stdin], [], [], 30)
"""


async def test_recording_an_engine_waits_for_the_lock_off_the_event_loop(tmp_path: Path) -> None:
    """While another process holds the catalog root's writers' lock, provisioning an engine
    waits for it without stopping the event loop: other coroutines run to completion first,
    and the record lands once the lock is released."""
    program = tmp_path / "engine" / "bin" / "llama-server"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    checksum = "sha256:" + "ab" * 32
    (tmp_path / "engine" / ".llorch-installed").write_text(checksum)
    pool = llamacpp_pool(
        "m.gguf",
        binary={
            "url": "https://example.invalid/llama-b1.tar.gz",
            "checksum": checksum,
            "install_dir": str(tmp_path / "engine"),
        },
        allow_binary_downloads=True,
    )
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    ctx = ProvisionContext(
        cache_root=tmp_path / "cache", index=FileEngineIndex(catalog), simulated=True
    )
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        str(catalog / ".lock"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert b"held\n" == await holder.stdout.readline()
        ensure = asyncio.create_task(provider_for(pool, ctx).ensure(pool))
        # Each of these yields to the loop; a put blocking the loop would not return here until
        # the holder let go (and the holder lets go only when told, below).
        for _ in range(20):
            await asyncio.sleep(0)
        other = await asyncio.create_task(asyncio.sleep(0, result="served"))
        assert "served" == other
        assert not ensure.done()
        assert [] == FileEngineIndex(catalog).list()
        holder.stdin.write(b"release\n")
        await holder.stdin.drain()
        prepared = await ensure
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()
    assert [prepared.engine_catalog_id] == [e.id for e in FileEngineIndex(catalog).list()]
