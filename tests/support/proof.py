"""``python -m tests.support.proof DIR``: complete the proof bundle that ``make proof`` began.

``make proof`` first runs the test suites into DIR (``junit.xml``, ``pytest.txt`` and the
determinism outputs under ``determinism/``). This module then serves the demo configuration as a
real subprocess and adds what a reviewer wants to see of a live server: SSE transcripts of one
seeded task with and without micro-batching, the capabilities snapshot (engine versions), the
metrics scrape and its lint result, samples of the placement decision log, the narration coverage
excerpt, and finally ``manifest.sha256`` over every file in DIR.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.metrics_lint import lint, load_contract, promtool, promtool_problems, unwaived
from tests.support.serve_process import ServeProcess, serve_process

ROOT = Path(__file__).resolve().parents[2]
DECISION_EVENTS = ("admit", "place")


def _write(bundle: Path, name: str, text: str) -> None:
    (bundle / name).write_text(text, encoding="utf-8")


def _wait_ready(client: httpx.Client) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        caps: dict[str, Any] = client.get("/v1/capabilities").json()
        if caps["pools"] and all(p["ready"] for p in caps["pools"]):
            return caps
        time.sleep(0.05)
    raise RuntimeError("the demo pools did not become ready")


def _transcripts(client: httpx.Client, pool: dict[str, Any], bundle: Path) -> None:
    # A 200 ms merge window lets the demo's slow mock pace show merged frames.
    modes = (
        ("sse-plain.txt", {"microbatch": "false"}),
        ("sse-microbatch.txt", {"microbatch": "true", "microbatch_max_delay_ms": "200"}),
    )
    for name, params in modes:
        body = {
            "task_id": str(uuid.uuid4()),
            "session_id": str(uuid.uuid4()),
            "workload": "completion",
            "model_ref": pool["model_id"],
            "engine": pool["engine"],
            "ctx": 2048,
            "priority": "interactive",
            "max_tokens": 24,
            "deadline_ms": 60_000,
            "prompt": "Write a haiku about GPUs.",
            "seed": 42,
        }
        admitted = client.post("/v1/tasks", json=body)
        admitted.raise_for_status()
        stream = client.get(f"/v1/tasks/{body['task_id']}/stream", params=params, timeout=60)
        _write(bundle, name, stream.text)


def _metrics(client: httpx.Client, bundle: Path) -> None:
    scrape = client.get("/metrics").text
    _write(bundle, "metrics.txt", scrape)
    contract = load_contract()
    lines = [
        f"contract ci/metrics.lint.json: {p}" for p in lint(contract, scrape, require_samples=False)
    ]
    binary = promtool()
    if binary is None:
        lines.append("promtool: unavailable (not checked)")
    else:
        code, problems = promtool_problems(binary, scrape)
        lines += [f"promtool: {p}" for p in unwaived(contract, problems)]
        lines.append(f"promtool: exit {code}; problems other than the waived ones are listed")
    verdict = "PASS" if not any(line.startswith("contract") for line in lines) else "FAIL"
    _write(bundle, "metrics-lint.txt", "\n".join([verdict, *lines]) + "\n")


def _decision_log(server: ServeProcess, bundle: Path) -> None:
    samples = []
    for line in server.log_path.read_text(encoding="utf-8").splitlines():
        if '"event":"admit"' in line or '"event":"place"' in line:
            samples.append(line)
    _write(bundle, "decision-log.jsonl", "\n".join(samples[:20]) + "\n")


def _narration(bundle: Path) -> None:
    report = bundle / "pytest.txt"
    text = report.read_text(encoding="utf-8") if report.exists() else ""
    lines = [line for line in text.splitlines() if "narration coverage" in line]
    _write(bundle, "narration-coverage.txt", "\n".join(lines or ["(no test report)"]) + "\n")


def manifest(bundle: Path) -> str:
    """``sha256  relative/path`` for every file but the manifest, sorted (sha256sum -c)."""
    lines = []
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        if path.name == "manifest.sha256":
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(bundle)}")
    return "\n".join(lines) + "\n"


def build(bundle: Path) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="llorch-proof-") as work:
        config["server"] = {"artifacts_dir": str(Path(work) / "artifacts")}
        with (
            serve_process(config, Path(work)) as server,
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            caps = _wait_ready(client)
            _write(bundle, "capabilities.json", json.dumps(caps, indent=2) + "\n")
            _transcripts(client, caps["pools"][0], bundle)
            _metrics(client, bundle)
        _decision_log(server, bundle)
    _narration(bundle)
    _write(bundle, "manifest.sha256", manifest(bundle))


if __name__ == "__main__":
    target = Path(sys.argv[1])
    build(target)
    print(f"proof bundle: {target} ({len(manifest(target).splitlines())} files)")
