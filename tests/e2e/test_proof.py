"""The live-server half of ``make proof`` (tests/support/proof.py) on a real demo server."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.support.proof import build


class TestProofBundle:
    def test_bundle_holds_evidence_and_a_matching_manifest(self, tmp_path: Path) -> None:
        """Transcripts with and without micro-batching, capabilities, metrics and their lint,
        decision-log samples, and a manifest whose every digest matches its file."""
        build(tmp_path)
        names = {p.name for p in tmp_path.iterdir()}
        assert {
            "capabilities.json",
            "sse-plain.txt",
            "sse-microbatch.txt",
            "metrics.txt",
            "metrics-lint.txt",
            "decision-log.jsonl",
            "narration-coverage.txt",
            "manifest.sha256",
        } <= names
        assert (tmp_path / "metrics-lint.txt").read_text().startswith("PASS")
        plain = (tmp_path / "sse-plain.txt").read_text()
        batched = (tmp_path / "sse-microbatch.txt").read_text()
        assert batched.count("event: token") < plain.count("event: token")
        lines = (tmp_path / "manifest.sha256").read_text().splitlines()
        assert len(lines) == len(names) - 1
        for line in lines:
            digest, name = line.split("  ", 1)
            assert digest == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
