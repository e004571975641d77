"""The engine index (engines.json) under concurrent writers and a disk that refuses writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llama_orch.provisioners.engine import EngineEntry, FileEngineIndex, ProvisionError

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
