"""``--timings``: the fake engine's own part of a stream's time to first token, for benchmarks
that subtract it from what a client measured."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx


def test_each_stream_leaves_its_body_and_engine_side_first_token_time(tmp_path: Path) -> None:
    """One JSON line per finished stream, in the system-wide monotonic clock: it falls between
    the client sending the request and the client reading its first token."""
    timings = tmp_path / "timings.jsonl"
    command = [sys.executable, "-m", "llama_orch.testing.fake_engines", "openai"]
    command += ["--api-key", "sk-t", "--ttft-ms", "30", "--timings", str(timings)]
    fake = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert fake.stdout is not None
        url = fake.stdout.readline().decode().strip()
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "marker-7f3a"}],
            "max_tokens": 3,
            "stream": True,
        }
        headers = {"Authorization": "Bearer sk-t"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            sent = time.monotonic_ns()
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                chunks = response.iter_raw()
                next(chunks)
                first = time.monotonic_ns()
                for _ in chunks:
                    pass
            client.get("/v1/models")  # not a stream: leaves no line
        deadline = time.monotonic() + 10
        while not timings.exists() or not timings.read_text():
            assert time.monotonic() < deadline, "no timing line was written"
            time.sleep(0.02)
    finally:
        fake.terminate()
        fake.wait(timeout=10)
        if fake.stdout is not None:
            fake.stdout.close()
    [line] = [json.loads(text) for text in timings.read_text().splitlines()]
    assert "marker-7f3a" == line["body"]["messages"][0]["content"]
    assert sent <= line["received_ns"] < line["first_ns"] <= first
    # The engine's own part holds its time to first token (30 ms here).
    assert line["first_ns"] - line["received_ns"] >= 30_000_000
