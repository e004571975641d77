"""Launched engines' processes and logs, end to end, through the binary path (simulated):

- helpers that leave the engine's process group (a wrapper that ``setsid``s one and
  double-forks another) do not outlive a reload or a server stop;
- a chatty engine's log stays within ``engines.log_max_bytes`` while it runs."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from llama_orch.testing.fake_engines.release import engine_archive, escaping_script
from tests.support.engines import tiny_gguf
from tests.support.https_files import https_files
from tests.support.launched import LaunchedSetup, launched_setup, process_of, wait_health
from tests.support.serve_process import serve_process
from tests.support.server import running_server


def _helpers(marker: str) -> set[int]:
    """Live processes whose command line holds ``marker`` (zombies have none)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.add(int(entry.name))
    return found


async def _until(predicate: Any, what: str) -> None:
    """Bounded: a loaded machine is slow, a leaked helper stays."""
    for _ in range(600):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


def _done(health: dict[str, Any]) -> bool:
    return (health.get("last_operation") or {}).get("state") == "done"


async def test_reload_and_shutdown_leave_no_engine_helper(tmp_path: Path) -> None:
    marker = f"helper-of-{uuid.uuid4().hex}"
    archive = engine_archive("llama-server", script_text=escaping_script("llama-server", marker))
    with https_files({"/llama-b1.tar.gz": archive}, tmp_path) as served:
        faults = tmp_path / "faults"
        faults.write_text("")
        setup = LaunchedSetup(tmp_path, tiny_gguf(tmp_path / "models"), faults, served)
        new_model = tiny_gguf(tmp_path / "models2", "tiny-next")
        async with running_server(setup.config()) as server:
            health = await wait_health(server, "lp", lambda h: h["ready"])
            await _until(lambda: len(_helpers(marker)) == 2, "the helpers never started")
            old = _helpers(marker)
            response = await server.client.post(
                "/v1/pools/lp/reload", json={"new_model_ref": str(new_model)}
            )
            assert 202 == response.status_code
            health = await wait_health(server, "lp", _done)
            assert process_of(health)["running"]
            await _until(lambda: not old & _helpers(marker), f"left by the reload: {old}")
        await _until(lambda: not _helpers(marker), f"left by the stop: {_helpers(marker)}")


async def test_a_chatty_engines_log_stays_bounded_while_it_runs(tmp_path: Path) -> None:
    """The engine writes 3 MB of log lines once listening: the supervisor rotates its log on
    its probe cadence, keeping the last lines, and the engine goes on serving."""
    limit = 128 * 1024
    with launched_setup(tmp_path) as setup:
        setup.faults.write_text("chatty:3000000")
        log = tmp_path / "run" / "logs" / "lp-r0.log"
        rotated = log.with_name("lp-r0.log.1")

        def settled() -> bool:
            text = log.read_text(errors="replace") if log.exists() else ""
            return "simulated: chatty done" in text and log.stat().st_size <= limit + 9000

        async with running_server(setup.config(log_max_bytes=limit)) as server:
            await wait_health(server, "lp", lambda h: h["ready"])
            await _until(settled, "the log was never brought back within its bound")
            health = await wait_health(server, "lp", lambda h: h["ready"])
            assert 0 == health["restart_count"]
        assert rotated.exists()
        assert b"\0" not in log.read_bytes()
        assert "log rotated" in log.read_text()


def _wait_sync(predicate: Any, what: str) -> None:
    """Bounded polling for the synchronous tests (a leaked helper stays)."""
    for _ in range(600):
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(what)


def _ready(url: str) -> bool:
    try:
        return bool(httpx.get(f"{url}/v1/pools/lp/health", timeout=5).json().get("ready"))
    except httpx.HTTPError:
        return False


def test_a_crashed_server_and_its_successor_leave_no_engine_helper(tmp_path: Path) -> None:
    """``llorch serve`` is SIGKILLed with its engine Ready: the engine and its helpers run on,
    orphaned. The next ``llorch serve`` on the same run dir stops all of them at start-up, and
    its own engine's helpers go at its SIGTERM."""
    marker = f"helper-of-{uuid.uuid4().hex}"
    archive = engine_archive("llama-server", script_text=escaping_script("llama-server", marker))
    with https_files({"/llama-b1.tar.gz": archive}, tmp_path) as served:
        faults = tmp_path / "faults"
        faults.write_text("")
        setup = LaunchedSetup(tmp_path, tiny_gguf(tmp_path / "models"), faults, served)
        config = setup.config().model_dump(mode="json", exclude_unset=True)
        with serve_process(config, tmp_path) as first:
            _wait_sync(lambda: _ready(first.url), "the first server's engine never got Ready")
            _wait_sync(lambda: len(_helpers(marker)) == 2, "the helpers never started")
            orphans = _helpers(marker)
            first.process.kill()
            first.process.wait()
        assert orphans <= _helpers(marker)  # a crash stops nothing
        with serve_process(config, tmp_path) as second:
            _wait_sync(lambda: not orphans & _helpers(marker), f"orphans left: {orphans}")
            _wait_sync(lambda: _ready(second.url), "the second server's engine never got Ready")
    _wait_sync(lambda: not _helpers(marker), f"left by the stop: {_helpers(marker)}")
