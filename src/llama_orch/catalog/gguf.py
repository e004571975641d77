"""GGUF headers (through the ``gguf`` package) and the VRAM a pool needs to serve a model.

The estimate, in the spirit of GPUStack's gguf-parser, is three terms:

- weights: the bytes of every tensor in the file (already quantized);
- KV cache: ``ctx x slots x layers x kv_heads x (key_length + value_length) x 2 bytes``
  (llama.cpp keeps K and V in f16 by default; ``key_length`` defaults to
  ``embedding_length / head_count``);
- overhead: a fixed ``OVERHEAD_BYTES`` (512 MiB) for the CUDA context and the compute buffers,
  which depend on the engine build and batch size and are not in the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_orch.catalog.entries import GgufInfo
from llama_orch.errors import InvalidParams

GGUF_MAGIC = b"GGUF"
KV_BYTES_PER_ELEMENT = 2
OVERHEAD_BYTES = 512 * 1024 * 1024


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _scalar(fields: dict[str, Any], key: str) -> Any:
    field = fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except (ValueError, IndexError):
        return None


def _int(value: Any) -> int | None:
    """A count or length from the header; a negative one (a signed field in a broken or lying
    file) is unknown, since subtracting it would shrink the VRAM estimate, and so is a float
    that is no number (inf, nan)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return int(value)


def read_gguf(path: Path) -> GgufInfo:
    """Read the header and tensor table of a GGUF file (no tensor data is loaded)."""
    import gguf  # the package; imported here so listing the catalog does not load numpy

    try:
        reader = gguf.GGUFReader(str(path), "r")
    # A truncated or corrupt file fails inside the reader's table walk in any of these ways
    # (an index past the end, an unknown type, a name that is not UTF-8, a count too large).
    except (ValueError, OSError, IndexError, KeyError, OverflowError, MemoryError) as exc:
        raise InvalidParams(
            f"{path.name} is not a readable GGUF file: {type(exc).__name__}: {exc}"
        ) from exc
    fields = reader.fields
    arch = _scalar(fields, "general.architecture")
    prefix = f"{arch}." if isinstance(arch, str) else ""
    file_type = _int(_scalar(fields, "general.file_type"))
    try:
        file_type_name = gguf.LlamaFileType(file_type).name if file_type is not None else None
    except ValueError:
        file_type_name = str(file_type)
    name = _scalar(fields, "general.name")
    return GgufInfo(
        architecture=arch if isinstance(arch, str) else None,
        name=name if isinstance(name, str) else None,
        context_length=_int(_scalar(fields, f"{prefix}context_length")),
        block_count=_int(_scalar(fields, f"{prefix}block_count")),
        embedding_length=_int(_scalar(fields, f"{prefix}embedding_length")),
        head_count=_int(_scalar(fields, f"{prefix}attention.head_count")),
        head_count_kv=_int(_scalar(fields, f"{prefix}attention.head_count_kv")),
        key_length=_int(_scalar(fields, f"{prefix}attention.key_length")),
        value_length=_int(_scalar(fields, f"{prefix}attention.value_length")),
        file_type=file_type_name,
        parameter_count=sum(int(t.n_elements) for t in reader.tensors),
        tensor_bytes=sum(int(t.n_bytes) for t in reader.tensors),
    )


@dataclass(frozen=True, slots=True)
class VramEstimate:
    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int
    ctx: int
    slots: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.overhead_bytes


def kv_bytes_per_token(info: GgufInfo) -> int:
    """K and V bytes one token occupies across all layers (0 when the header lacks sizes)."""
    if not (info.block_count and info.head_count and info.embedding_length):
        return 0
    head_dim = info.embedding_length // info.head_count
    kv_heads = info.head_count_kv or info.head_count
    key = info.key_length or head_dim
    value = info.value_length or head_dim
    return info.block_count * kv_heads * (key + value) * KV_BYTES_PER_ELEMENT


def estimate_vram(
    info: GgufInfo, *, ctx: int | None, slots: int, weights_bytes: int | None = None
) -> VramEstimate:
    """VRAM to serve ``info`` with ``slots`` sequences of ``ctx`` tokens (model max if None)."""
    context = ctx or info.context_length or 0
    return VramEstimate(
        weights_bytes=info.tensor_bytes if weights_bytes is None else weights_bytes,
        kv_bytes=kv_bytes_per_token(info) * context * slots,
        overhead_bytes=OVERHEAD_BYTES,
        ctx=context,
        slots=slots,
    )
