"""Every requirement id or spec section the repository cites is stated in docs/requirements.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IDS = re.compile(r"\b((?:ORCH|OC-[A-Z]+|D-[A-Z]+|AUTH|SSE|ADAPT|HME)-[0-9]+[a-z]?)\b")
SECTIONS = re.compile(r"SPEC §([0-9]+(?:\.[0-9]+)?)")


def cited() -> tuple[set[str], set[str]]:
    files = [
        *ROOT.joinpath("src").rglob("*.py"),
        *ROOT.joinpath("docs").glob("*.md"),
        ROOT / "README.md",
    ]
    ids: set[str] = set()
    sections: set[str] = set()
    for path in files:
        if path.name == "requirements.md":
            continue
        text = path.read_text(encoding="utf-8")
        ids |= set(IDS.findall(text))
        sections |= set(SECTIONS.findall(text))
    return ids, sections


class TestRequirementsDoc:
    def test_every_cited_id_is_stated(self) -> None:
        """A reader can look up every requirement id and spec section the code or docs cite."""
        doc = ROOT.joinpath("docs", "requirements.md").read_text(encoding="utf-8")
        stated_ids = set(re.findall(r"^\| `([^`]+)` \|", doc, flags=re.M))
        stated_sections = set(re.findall(r"^\| §([0-9.]+) \|", doc, flags=re.M))
        ids, sections = cited()
        assert (set(), set()) == (ids - stated_ids, sections - stated_sections)
