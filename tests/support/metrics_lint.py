"""The metrics lint: a Prometheus scrape checked against ``ci/metrics.lint.json``.

Also runs ``promtool check metrics`` (Debian package ``prometheus``), installing it through apt
when it is missing and apt is usable; the Makefile's test setup does the same ahead of time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
CONTRACT_PATH = ROOT / "ci" / "metrics.lint.json"


def load_contract(path: Path = CONTRACT_PATH) -> dict[str, Any]:
    contract: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return contract


@dataclass
class Family:
    type: str
    #: Distinct label sets of the family's series (``le`` left out: buckets are one series).
    series: set[tuple[tuple[str, str], ...]] = field(default_factory=set)
    buckets: set[float] = field(default_factory=set)


def parse_scrape(text: str) -> dict[str, Family]:
    """Families by their exposed name (counters keep their ``_total``)."""
    families: dict[str, Family] = {}
    for parsed in text_string_to_metric_families(text):
        name = parsed.name + "_total" if parsed.type == "counter" else parsed.name
        family = families.setdefault(name, Family(parsed.type))
        for sample in parsed.samples:
            labels = dict(sample.labels)
            le = labels.pop("le", None)
            if le is not None and le != "+Inf":
                family.buckets.add(float(le))
            family.series.add(tuple(sorted(labels.items())))
    return families


def lint(contract: dict[str, Any], text: str, *, require_samples: bool = True) -> list[str]:
    """Every problem of ``text`` against the contract; an empty list is a pass."""
    problems: list[str] = []
    families = parse_scrape(text)
    budgets: dict[str, int] = contract["label_budgets"]
    declared = {m["name"]: m for m in contract["metrics"]}
    for name in sorted(set(families) - set(declared)):
        problems.append(f"{name}: exposed but not in the lint file")
    for name, spec in declared.items():
        family = families.get(name)
        if family is None:
            problems.append(f"{name}: missing from the scrape")
            continue
        if family.type != spec["type"]:
            problems.append(f"{name}: type {family.type}, contract says {spec['type']}")
        if require_samples and spec.get("samples_expected", True) and not family.series:
            problems.append(f"{name}: no samples after traffic")
        problems += _check_series(name, spec, family, budgets)
        if "buckets" in spec and family.series and family.buckets != set(spec["buckets"]):
            problems.append(f"{name}: buckets {sorted(family.buckets)} != {spec['buckets']}")
    return problems


def _check_series(
    name: str, spec: dict[str, Any], family: Family, budgets: dict[str, int]
) -> list[str]:
    problems: list[str] = []
    wanted = set(spec["labels"])
    values: dict[str, set[str]] = defaultdict(set)
    for series in family.series:
        names = {k for k, _ in series}
        if names != wanted:
            extra, missing = sorted(names - wanted), sorted(wanted - names)
            problems.append(
                f"{name}: labels {sorted(names)} (unexpected {extra}, missing {missing})"
            )
        for key, value in series:
            values[key].add(value)
    for key, seen in values.items():
        allowed = spec.get("allowed_values", {}).get(key)
        if allowed is not None and not seen <= set(allowed):
            problems.append(f"{name}: {key} values {sorted(seen - set(allowed))} not allowed")
        budget = budgets.get(key)
        if budget is not None and len(seen) > budget:
            problems.append(f"{name}: {len(seen)} values of {key} exceed its budget of {budget}")
    if len(family.series) > spec["max_series"]:
        problems.append(
            f"{name}: {len(family.series)} series exceed max_series {spec['max_series']}"
        )
    return problems


def promtool() -> str | None:
    """The promtool binary, installing Debian's ``prometheus`` package once if apt can."""
    found = shutil.which("promtool")
    if found is not None:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
    ):
        if subprocess.run(command, env=env, capture_output=True, timeout=300).returncode:
            return None
    return shutil.which("promtool")


def promtool_problems(binary: str, text: str) -> tuple[int, list[str]]:
    """promtool's exit code and its problem lines (``<metric> <problem>``)."""
    done = subprocess.run(
        [binary, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    output = (done.stdout + done.stderr).decode()
    return done.returncode, [line.strip() for line in output.splitlines() if line.strip()]


def unwaived(contract: dict[str, Any], problems: list[str]) -> list[str]:
    waived = {f"{w['metric']} {w['problem']}" for w in contract.get("promtool_waivers", [])}
    return [p for p in problems if p not in waived]
