"""contrib/grafana/llama-orch.json graphs the metrics contract, with valid PromQL."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.metrics_lint import ROOT, load_contract, promtool

DASHBOARD = ROOT / "contrib" / "grafana" / "llama-orch.json"
_SUFFIXES = ("_bucket", "_count", "_sum")


def exprs() -> list[str]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    """Identifiers followed by a selector or range, or alone in parentheses: metric names."""
    expr = re.sub(r"by \([^)]*\)", "", expr)
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?=\{|\[)", expr))
    names |= set(re.findall(r"\(([a-z_][a-z0-9_]*)\)", expr))
    return {n.removesuffix(s) for n in names for s in _SUFFIXES if n.endswith(s)} | {
        n for n in names if not n.endswith(_SUFFIXES)
    }


class TestDashboard:
    def test_panels_cover_the_asked_views(self) -> None:
        """Queue depth, admissions vs rejections, TTFT, decode, tokens/s and VRAM are graphed."""
        titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
        for wanted in (
            "Queue depth per pool and priority",
            "Admissions vs rejections (per second)",
            "Time to first token (p50 / p95 / p99)",
            "Decode time (p50 / p95 / p99)",
            "Tokens per second",
            "VRAM used per device",
        ):
            assert wanted in titles

    def test_only_contract_metrics_and_labels(self) -> None:
        """Every metric the dashboard queries is in the lint file, grouped by its own labels."""
        contract = {m["name"]: set(m["labels"]) for m in load_contract()["metrics"]}
        for expr in exprs():
            used = metric_names(expr)
            assert used and used <= set(contract), expr
            labels = set().union(*(contract[n] for n in used)) | {"le"}
            for group in re.findall(r"by \(([^)]*)\)", expr):
                assert {g.strip() for g in group.split(",")} <= labels, expr

    def test_promql_parses(self, tmp_path: Path) -> None:
        """promtool accepts every expression (as recording rules, with variables filled in)."""
        binary = promtool()
        if binary is None:
            pytest.skip("PROMTOOL CHECK SKIPPED: promtool is not installed and apt is unusable")
        rules = [
            {
                "record": f"llama_orch:panel_{i}",
                "expr": e.replace("$pool", ".*").replace("$__rate_interval", "5m"),
            }
            for i, e in enumerate(exprs())
        ]
        path = tmp_path / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        done = subprocess.run([binary, "check", "rules", str(path)], capture_output=True)
        assert 0 == done.returncode, done.stdout.decode() + done.stderr.decode()
