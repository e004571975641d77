"""Each engine example's "try it without a GPU" comment, followed as written, serves a task.

The comment names a fake engine command line, an environment and the edits to make (uncomment
`gpus.simulated`, point `endpoint` at the fake). The test runs that command on a free port
instead of the written one, makes those edits, starts `llorch serve` and sends one task.
Everything here is simulated: fake engines speaking the real wire protocols, no inference.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.serve_process import free_port, serve_process, stop

ROOT = Path(__file__).resolve().parents[2]
#: The command in an example's comment, which may wrap onto the next comment line.
COMMAND = re.compile(r"`python -m (llama_orch\.testing\.fake_engines [^`]+)`")
TRIES = sorted(
    path.name
    for path in ROOT.glob("examples/*.yaml")
    if "llama_orch.testing.fake_engines" in path.read_text(encoding="utf-8")
)


def _comment(text: str) -> str:
    """The example's leading comment as one line."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def _follow(text: str, port: int) -> tuple[list[str], dict[str, object], dict[str, str]]:
    """The fake's argv, the edited config and the environment the comment asks for."""
    comment = _comment(text)
    match = COMMAND.search(comment)
    assert match is not None, "no fake engine command in the example's comment"
    argv = shlex.split(match.group(1))
    written_port = argv[argv.index("--port") + 1]
    argv[argv.index("--port") + 1] = str(port)
    environ = dict(re.findall(r"\b([A-Z][A-Z0-9_]+)=(\S+)", comment.replace(match.group(0), "")))
    edited = re.sub(r"^# gpus:", "gpus:", text, flags=re.M)
    edited = re.sub(r"^#   simulated:", "  simulated:", edited, flags=re.M)
    config = yaml.safe_load(edited)
    written = f"http://127.0.0.1:{written_port}"
    # The endpoint is either in the file already or named in the comment ("endpoint http://...").
    told = f"endpoint {written}" in comment
    for pool in config["pools"]:
        if told or pool["endpoint"] == written:
            pool["endpoint"] = f"http://127.0.0.1:{port}"
    return argv, config, environ


def _wait_ready(url: str, deadline_s: float = 20.0) -> dict[str, object]:
    """The first pool once it is Ready (it probes the fake engine first)."""
    end = time.monotonic() + deadline_s
    with httpx.Client(base_url=url, timeout=5.0) as client:
        while True:
            pool: dict[str, object] = client.get("/v1/capabilities").json()["pools"][0]
            if pool["ready"] or time.monotonic() > end:
                return pool
            time.sleep(0.1)


@pytest.mark.parametrize("example", TRIES)
def test_offline_try_out_serves_a_task(example: str, tmp_path: Path) -> None:
    text = (ROOT / "examples" / example).read_text(encoding="utf-8")
    port = free_port()
    argv, config, environ = _follow(text, port)
    fake = subprocess.Popen(
        [sys.executable, "-m", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with serve_process(config, tmp_path, environ=environ) as srv:
            pool = _wait_ready(srv.url)
            assert pool["ready"], pool
            task_id = str(uuid.uuid4())
            body = {
                "task_id": task_id,
                "session_id": task_id,
                "workload": "completion",
                "model_ref": pool["model_id"],
                "engine": pool["engine"],
                "ctx": 1024,
                "priority": "interactive",
                "max_tokens": 4,
                "deadline_ms": 30000,
                "prompt": "hello",
            }
            answer = httpx.post(
                f"{srv.url}/v1/tasks", json=body, headers={"Prefer": "wait"}, timeout=30
            )
    finally:
        stop(fake)
    assert 200 == answer.status_code, answer.text
    assert ("done", 4) == (answer.json()["state"], answer.json()["tokens_out"])
