"""Deterministic generation of the contract files (OC-CONFIG-6010, D-CON-01).

Stable key order, no timestamps; a file is rewritten only when its content changed, through a
temporary file and an atomic rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from llama_orch.config import Config
from llama_orch.contracts.openapi import render_openapi

SCHEMA_ID = "https://llama-orch.dev/schemas/config.schema.json"


def config_schema_text() -> str:
    schema = Config.model_json_schema(mode="validation")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def generated_files() -> dict[str, str]:
    """Repository-relative path -> content of every generated contract file."""
    return {
        "contracts/config.schema.json": config_schema_text(),
        "contracts/openapi/data.yaml": render_openapi("data"),
        "contracts/openapi/control.yaml": render_openapi("control"),
        "contracts/openapi/openai.yaml": render_openapi("openai"),
    }


def write_atomically(path: Path, content: str) -> bool:
    """Write ``content`` if it differs from what is there; True when the file changed."""
    if path.exists() and path.read_text(encoding="utf-8") == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def write_contracts(root: Path) -> list[tuple[str, bool]]:
    return [(rel, write_atomically(root / rel, text)) for rel, text in generated_files().items()]
