"""Every config example in the README and docs/ loads: a copied snippet never fails start-up."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from llama_orch.config import Config, parse_config_text

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.S)
#: Enough to load a snippet that shows only one section.
FILLER: dict[str, Any] = {
    "gpus": {"simulated": [{"index": i, "name": "sim", "vram_mb": 24576} for i in range(2)]},
    "pools": [{"id": "filler", "engine": "mock", "model": "m"}],
}


def config_snippets() -> list[Any]:
    """Snippets whose top-level keys are all config sections (pool fragments are left out)."""
    found = []
    for path in [ROOT / "README.md", *sorted(ROOT.joinpath("docs").glob("*.md"))]:
        for number, match in enumerate(BLOCK.finditer(path.read_text(encoding="utf-8"))):
            snippet = yaml.safe_load(match.group(1))
            if isinstance(snippet, dict) and set(snippet) <= set(Config.model_fields):
                found.append(pytest.param(snippet, id=f"{path.name}#{number}"))
    return found


@pytest.mark.parametrize("snippet", config_snippets())
def test_documented_config_loads(snippet: dict[str, Any]) -> None:
    text = yaml.safe_dump({**FILLER, **snippet})
    assert parse_config_text(text, "snippet.yaml").pools
