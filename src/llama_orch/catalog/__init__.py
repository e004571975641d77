"""The model and engine catalog: refs, the on-disk indexes, digests and GGUF metadata.

The catalog performs no network I/O; the model provisioner fetches and then registers here.
"""

from llama_orch.catalog.entries import (
    GgufInfo,
    Lifecycle,
    ModelEntry,
    ModelFile,
    ResolvedModel,
)
from llama_orch.catalog.refs import (
    FileRef,
    HfRef,
    ModelRef,
    OciRef,
    S3Ref,
    UrlRef,
    format_ref,
    parse_ref,
    ref_id,
)
from llama_orch.catalog.store import (
    CatalogStore,
    DeleteOutcome,
    default_catalog_root,
    default_model_cache_dir,
)
from llama_orch.catalog.verify import Digest, VerifyResult, parse_digest, verify_digest

__all__ = [
    "CatalogStore",
    "DeleteOutcome",
    "Digest",
    "FileRef",
    "GgufInfo",
    "HfRef",
    "Lifecycle",
    "ModelEntry",
    "ModelFile",
    "ModelRef",
    "OciRef",
    "ResolvedModel",
    "S3Ref",
    "UrlRef",
    "VerifyResult",
    "default_catalog_root",
    "default_model_cache_dir",
    "format_ref",
    "parse_digest",
    "parse_ref",
    "ref_id",
    "verify_digest",
]
