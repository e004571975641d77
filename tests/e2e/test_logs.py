"""Logs as an operator sees them: `llorch serve` output formats, and no log line per token."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import orjson

from tests.support.narration import NarrationLog
from tests.support.server import config_of, running_server, task_body, yaml_config

ROOT = Path(__file__).resolve().parents[2]


async def first_lines(config: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """Start `llorch serve`, collect its output until it says it serves, then stop it."""
    clean = {k: v for k, v in os.environ.items() if k not in ("LOG_FORMAT", "AUTH_TOKEN")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llama_orch",
        "serve",
        "--config",
        str(config),
        "--bind",
        "127.0.0.1:0",
        *args,
        cwd=ROOT,
        env={**clean, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not any("Serves 1 pool on" in line for line in lines):
                raw = await proc.stdout.readline()
                if not raw:
                    break
                lines.append(raw.decode().rstrip("\n"))
    finally:
        # A refused start has exited already, possibly reaped before this runs.
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()
    return lines


class TestServeOutput:
    async def test_json_by_default_pretty_by_flag_or_env(self, tmp_path: Path) -> None:
        """JSON Lines by default; --log-format pretty or LOG_FORMAT=pretty give console lines."""
        config = tmp_path / "c.yaml"
        config.write_text(yaml_config(config_of().model_dump(mode="json")))
        default, by_flag, by_env = await asyncio.gather(
            first_lines(config),
            first_lines(config, "--log-format", "pretty"),
            first_lines(config, env={"LOG_FORMAT": "pretty"}),
        )
        started = [orjson.loads(line) for line in default if "Serves 1 pool on" in line]
        assert ("server", "start") == (started[0]["actor"], started[0]["action"])
        for pretty in (by_flag, by_env):
            line = next(x for x in pretty if "Serves 1 pool on" in x)
            assert not line.startswith("{") and "[server]" in line

    async def test_bad_log_format_is_refused(self, tmp_path: Path) -> None:
        """LOG_FORMAT outside json|pretty fails start-up with the key named."""
        config = tmp_path / "c.yaml"
        config.write_text(yaml_config(config_of().model_dump(mode="json")))
        lines = await first_lines(config, env={"LOG_FORMAT": "xml"})
        assert any("LOG_FORMAT: must be json or pretty" in line for line in lines)


class TestNoLinePerToken:
    async def test_long_stream_logs_as_much_as_a_short_one(self, narration: NarrationLog) -> None:
        """A 200-token stream emits the same log events as a 2-token stream: none per token."""
        task_ids = []
        async with running_server(config_of()) as srv:
            for tokens in (2, 200):
                body = task_body(max_tokens=tokens)
                await srv.submit(body)
                frames = await srv.stream(body["task_id"])
                assert tokens == sum(1 for event, _ in frames if event == "token")
                task_ids.append(body["task_id"])
        short, long = (
            sorted(
                str(e["action"])
                for e in narration.events()
                if task_id in (e.get("task_id"), *str(e.get("target")).split("/"))
            )
            for task_id in task_ids
        )
        assert ["admit", "place", "request", "stream-end", "stream-start", "submit"] == short
        assert short == long
