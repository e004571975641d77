"""Provider verification: the three served OpenAPI documents (data plane, OpenAI-compatible
routes, control plane), fuzzed against a running server.

schemathesis generates valid and invalid requests for every operation (examples, coverage,
fuzzing and stateful phases; every check) and validates each answer against the documented
status codes, headers and schemas. A 5xx, an undocumented status or a schema mismatch fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import SUMMARY
from tests.contract.st_hooks import MODEL_FILE_ENV
from tests.support.gguf_files import tiny_llama_gguf
from tests.support.serve_process import serve_process
from tests.support.server import SIMULATED_GPUS, mock_pool

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
ST = Path(sys.executable).parent / "st"
#: Enough examples per operation for >= 2,000 requests over the three documents (about 3,000
#: requests, under a minute on a two-core machine).
MAX_EXAMPLES = 60
MIN_REQUESTS = 2_000


def _config(artifacts: Path) -> dict[str, Any]:
    pool = mock_pool("p0", "m0", mock={"ttft_ms": 0, "tokens_per_s": 50_000.0})
    pool["queue"] = {"capacity": 16, "full_policy": "reject"}
    return {"gpus": SIMULATED_GPUS, "pools": [pool], "server": {"artifacts_dir": str(artifacts)}}


def _verify(url: str, plane: str, report: Path, model_file: Path) -> tuple[int, str]:
    command = [
        str(ST),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "--no-color",
        "run",
        f"{url}/openapi/{plane}.yaml",
        "--url",
        url,
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.contract.st_hooks",
        "PYTHONPATH": str(ROOT),
        MODEL_FILE_ENV: str(model_file),
    }
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = done.stdout + done.stderr
    found = re.search(r"(\d+) generated", output)
    generated = int(found.group(1)) if found else 0
    assert 0 == done.returncode, f"schemathesis found problems in the {plane} plane:\n{output}"
    return generated, output


@pytest.mark.timeout(600)
def test_every_document_holds_against_the_running_server(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Every generated request over every document gets a documented, schema-valid answer."""
    counts = {}
    model_file = tiny_llama_gguf(tmp_path / "tiny.gguf")
    with serve_process(_config(tmp_path / "artifacts"), tmp_path) as server:
        # The control plane goes last: its drain operation really drains the served pool.
        for plane in ("data", "openai", "control"):
            report = tmp_path / f"schemathesis-{plane}.xml"
            counts[plane], _ = _verify(server.url, plane, report, model_file)
        log = server.log_path.read_text(encoding="utf-8")
    total = sum(counts.values())
    summary = f"provider verification: {total} generated requests {counts}, 0 failures"
    request.config.stash.setdefault(SUMMARY, []).append(summary)
    assert "Traceback" not in log
    assert total >= MIN_REQUESTS, counts
