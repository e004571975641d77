from __future__ import annotations

from pathlib import Path

import yaml

from llama_orch.contracts.api import API_VERSION
from llama_orch.contracts.schema import generated_files

ROOT = Path(__file__).resolve().parents[2]


class TestGeneratedContracts:
    def test_committed_files_are_fresh(self) -> None:
        """contracts/ matches what the code generates; run `make schema` after a change."""
        stale = [
            rel
            for rel, text in generated_files().items()
            if (ROOT / rel).read_text(encoding="utf-8") != text
        ]
        assert [] == stale

    def test_generation_is_deterministic(self) -> None:
        """Two generations give byte-identical files (no timestamps, stable order)."""
        assert generated_files() == generated_files()

    def test_api_version_matches_openapi(self) -> None:
        """Every OpenAPI document carries the api_version that capabilities report."""
        for plane in ("data", "control", "openai"):
            doc = yaml.safe_load((ROOT / f"contracts/openapi/{plane}.yaml").read_text())
            assert API_VERSION == doc["info"]["version"]

    def test_data_plane_operations_have_examples(self) -> None:
        """Every data-plane operation carries x-examples (OC-CTRL-2067)."""
        doc = yaml.safe_load((ROOT / "contracts/openapi/data.yaml").read_text())
        missing = [
            f"{method.upper()} {path}"
            for path, ops in doc["paths"].items()
            for method, op in ops.items()
            if not op.get("x-examples")
        ]
        assert [] == missing
