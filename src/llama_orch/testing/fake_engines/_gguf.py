"""Just enough GGUF to check a model file the way an engine does at load: the magic, the version
and the string metadata (``general.architecture``, ``general.name``, ...).

Fake engines use it to refuse a file that is not a model, as llama-server does; it reads the
header only and never the tensors.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
#: GGUF value types -> struct format of their fixed-size scalars (8 is string, 9 is array).
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


class GgufError(ValueError):
    """The file is not a GGUF model this reader understands."""


def is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == MAGIC


def _read(f: BinaryIO, fmt: str) -> tuple[object, ...]:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GgufError("truncated GGUF header")
    return struct.unpack(fmt, data)


def _string(f: BinaryIO) -> str:
    (length,) = _read(f, "<Q")
    assert isinstance(length, int)
    if length > 1 << 20:
        raise GgufError(f"implausible GGUF string length {length}")
    return f.read(length).decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int) -> object:
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item_kind, count = _read(f, "<IQ")
        assert isinstance(item_kind, int) and isinstance(count, int)
        return [_value(f, item_kind) for _ in range(count)]
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise GgufError(f"unknown GGUF value type {kind}")
    return _read(f, "<" + fmt)[0]


def read_metadata(path: Path) -> dict[str, object]:
    """The key/value metadata of a GGUF file (version 2 or 3); raises GgufError otherwise."""
    with path.open("rb") as f:
        if f.read(4) != MAGIC:
            raise GgufError(f"{path} is not a GGUF file (bad magic)")
        version, _tensors, n_kv = _read(f, "<IQQ")
        if version not in (2, 3):
            raise GgufError(f"unsupported GGUF version {version}")
        assert isinstance(n_kv, int)
        meta: dict[str, object] = {"gguf.version": version}
        for _ in range(n_kv):
            key = _string(f)
            (kind,) = _read(f, "<I")
            assert isinstance(kind, int)
            meta[key] = _value(f, kind)
        return meta


def write_minimal(path: Path, metadata: dict[str, str]) -> Path:
    """Write a header-only GGUF v3 file with string metadata (test models; no tensors)."""
    out = bytearray(MAGIC + struct.pack("<IQQ", 3, 0, len(metadata)))
    for key, value in metadata.items():
        raw_key, raw_value = key.encode(), value.encode()
        out += struct.pack("<Q", len(raw_key)) + raw_key
        out += struct.pack("<IQ", _STRING, len(raw_value)) + raw_value
    path.write_bytes(bytes(out))
    return path
