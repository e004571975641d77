"""Launched engines under supervision, end to end: the fake llama-server is provisioned through
the binary path, launched, probed, crashed, hung and stopped as a real engine would be; each
test checks what the client and the operator (health, metrics) see."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llama_orch.pool.engine_process import Supervision
from llama_orch.pool.launch import LaunchSpec, LocalLauncher
from llama_orch.pool.launch._tree import MARK_VAR, as_subreaper, marked_roots
from llama_orch.pool.launch.local import LOCK_NAME, launch_record, write_record
from tests.support.engines import engine_healthy, fake_executable
from tests.support.launched import (
    LaunchedSetup,
    launched_setup,
    llama_task,
    process_of,
    wait_health,
)
from tests.support.llama_repo import head, llama_cpp_repo
from tests.support.narration import NarrationLog
from tests.support.serve_process import free_port, serve_process
from tests.support.server import running_server, sse_events


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[LaunchedSetup]:
    with launched_setup(tmp_path) as s:
        yield s


def _ready(health: dict[str, Any]) -> bool:
    return bool(health["ready"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class TestLaunch:
    async def test_provisions_launches_serves_and_stops(self, setup: LaunchedSetup) -> None:
        """Binary path -> process -> Ready -> a streamed task; shutdown leaves no process."""
        async with running_server(setup.config()) as server:
            health = await wait_health(server, "lp", _ready)
            process = process_of(health)
            assert health["simulated"] is True
            assert "binary" == health["provisioning_mode"]
            assert health["engine_digest"].startswith("sha256:")
            assert 0 == health["restart_count"]
            assert process["running"] and process["pid"]
            body = llama_task(setup.model, max_tokens=5)
            assert 202 == (await server.submit(body)).status_code
            frames = await server.stream(body["task_id"])
            assert "end" == frames[-1][0]
            pid = process["pid"]
        assert not _pid_alive(pid)
        assert [] == list((setup.tmp / "run" / "pids").glob("*.pid"))
        log = (setup.tmp / "run" / "logs" / "lp-r0.log").read_text()
        assert "--n-gpu-layers 999" in log

    async def test_source_build_launches_and_serves(self, setup: LaunchedSetup) -> None:
        """The source path end to end: git, CMake with CUDA, llama-server, Ready, a task."""
        repo = llama_cpp_repo(setup.tmp)
        pool = setup.pool()
        pool["provisioning"] = {
            "mode": "source",
            "source": {"repo": str(repo), "ref": "master"},
            "env": pool["provisioning"]["env"],
        }
        async with running_server(setup.config(pool)) as server:
            health = await wait_health(server, "lp", _ready)
            assert "source" == health["provisioning_mode"]
            assert process_of(health)["engine_version"].startswith(head(repo)[:12] + "+")
            body = llama_task(setup.model, max_tokens=3)
            assert 202 == (await server.submit(body)).status_code
            assert "end" == (await server.stream(body["task_id"]))[-1][0]

    async def test_orphans_of_a_crashed_run_are_stopped(self, setup: LaunchedSetup) -> None:
        """An engine whose server died (its pid file remains) is stopped at the next start."""
        exe = fake_executable(setup.tmp / "old-bin", "llama-server")
        port = free_port()
        argv = (str(exe), "--model", str(setup.model), "--port", str(port))
        orphan = await LocalLauncher(setup.tmp / "run").launch(LaunchSpec("lp", "r0", argv, port))
        async with running_server(setup.config()) as server:
            await wait_health(server, "lp", _ready)
            assert await asyncio.wait_for(orphan.wait(), 10) in (0, -signal.SIGTERM)

    async def test_an_engine_started_before_its_pid_was_recorded_is_stopped(
        self, setup: LaunchedSetup
    ) -> None:
        """A server killed between starting an engine and recording its pid leaves a record
        without a pid: the next server finds the engine by its launch's mark and stops it.
        (The crash is reproduced exactly: the record is written, then the engine started with
        the launch's mark and environment, and no pid is ever recorded.)"""
        exe = fake_executable(setup.tmp / "old-bin", "llama-server")
        port = free_port()
        spec = LaunchSpec(
            "lp", "r0", (str(exe), "--model", str(setup.model), "--port", str(port)), port
        )
        mark = uuid.uuid4().hex
        pids = setup.tmp / "run" / "pids"
        pids.mkdir(parents=True)
        write_record(pids / "lp-r0.pid", launch_record(spec, mark, None))
        orphan = await asyncio.create_subprocess_exec(
            *as_subreaper(spec.argv),
            env={**os.environ, MARK_VAR: mark},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            await engine_healthy(spec.endpoint)
            async with running_server(setup.config()) as server:
                await wait_health(server, "lp", _ready)
                async with asyncio.timeout(10):
                    assert await orphan.wait() in (0, -signal.SIGTERM)
        finally:
            if orphan.returncode is None:
                orphan.kill()
                await orphan.wait()
        assert not marked_roots(mark)

    async def test_model_missing_keeps_the_gate_closed(self, setup: LaunchedSetup) -> None:
        """A model path that does not exist: Unready, and health names the model gate."""
        pool = setup.pool(model=str(setup.tmp / "absent.gguf"))
        async with running_server(setup.config(pool)) as server:
            health = await wait_health(
                server, "lp", lambda h: "model not present" in (h["last_error"] or "")
            )
            gates = health["metrics"]["replicas"][0]["gates"]
            assert {"model_present": False, "engine_ensured": True, "healthy": False} == gates

    async def test_model_larger_than_the_mask_vram_is_refused(self, setup: LaunchedSetup) -> None:
        """Weights bigger than the GPUs of the mask: the engine is not launched (no spill)."""
        big = setup.tmp / "big.gguf"
        big.write_bytes(setup.model.read_bytes() + b"\0" * (2 * 2**20))
        gpus = {"simulated": [{"index": 0, "name": "tiny (simulated)", "vram_mb": 1}]}
        async with running_server(setup.config(setup.pool(model=str(big)), gpus=gpus)) as server:
            health = await wait_health(
                server, "lp", lambda h: "does not fit" in (h["last_error"] or "")
            )
            assert process_of(health)["pid"] is None
            assert not (setup.tmp / "run" / "logs" / "lp-r0.log").exists()


class TestFaults:
    async def test_kill_9_mid_stream(self, setup: LaunchedSetup) -> None:
        """The running task ends with a retriable error, the queued one waits and is served
        after the supervisor restarted the engine."""
        pool = setup.pool(slots=1, env={"FAKE_ENGINE_TOKENS_PER_S": "20"})
        async with running_server(setup.config(pool)) as server:
            health = await wait_health(server, "lp", _ready)
            pid = process_of(health)["pid"]
            first = llama_task(setup.model, max_tokens=400)
            second = llama_task(setup.model, max_tokens=3)
            assert 202 == (await server.submit(first)).status_code
            assert 202 == (await server.submit(second)).status_code
            frames: list[tuple[str, dict[str, Any]]] = []
            async for event, data in sse_events(server.client, first["task_id"]):
                frames.append((event, data))
                if event == "token":
                    os.kill(pid, signal.SIGKILL)
            assert "error" == frames[-1][0]
            assert frames[-1][1]["retriable"] is True
            rest = await server.stream(second["task_id"])
            assert "end" == rest[-1][0]
            health = await wait_health(server, "lp", _ready)
            assert 1 == health["restart_count"]
            assert process_of(health)["last_exit"].startswith("exited (status -9)")
            assert process_of(health)["pid"] != pid

    async def test_sigstop_hang_is_killed_and_restarted(self, setup: LaunchedSetup) -> None:
        """A stopped engine fails its probes and is killed: the stream it held ends with a
        retriable error, and the replica comes back Ready."""
        pool = setup.pool(env={"FAKE_ENGINE_TOKENS_PER_S": "20"})
        async with running_server(setup.config(pool)) as server:
            health = await wait_health(server, "lp", _ready)
            pid = process_of(health)["pid"]
            body = llama_task(setup.model, max_tokens=400)
            assert 202 == (await server.submit(body)).status_code
            frames: list[tuple[str, dict[str, Any]]] = []
            async for event, data in sse_events(server.client, body["task_id"]):
                frames.append((event, data))
                if event == "token" and len(frames) == 2:
                    os.kill(pid, signal.SIGSTOP)
            assert ("error", True) == (frames[-1][0], frames[-1][1]["retriable"])
            health = await wait_health(
                server, "lp", lambda h: h["ready"] and h["restart_count"] == 1
            )
            assert process_of(health)["last_exit"].startswith("hung")
            assert not _pid_alive(pid)

    async def test_crash_loop_opens_the_storm_breaker(
        self, setup: LaunchedSetup, narration: NarrationLog
    ) -> None:
        """An engine that always exits at start is restarted after doubling backoffs, then no
        more after 3 failures; the client gets a retriable POOL_UNREADY naming the cause."""
        setup.faults.write_text("exit_at_start")
        config = setup.config(restart_storm={"failures": 3, "window_s": 60})
        async with running_server(config) as server:
            health = await wait_health(
                server, "lp", lambda h: "restart storm" in (h["last_error"] or "")
            )
            assert process_of(health)["restart_storm"] is True
            assert "simulated fault" in health["last_error"]
            response = await server.submit(llama_task(setup.model))
            assert 503 == response.status_code
            assert "POOL_UNREADY" == response.json()["code"]
            assert "restart storm" in response.json()["message"]
            scrape = (await server.client.get("/metrics")).text
            assert 'pool_restart_storm{pool_id="lp",replica_id="r0"} 1.0' in scrape
            assert 'pool_restarts_total{pool_id="lp",reason="exited"} 3.0' in scrape
            assert 'pool_preload_total{outcome="failure",pool_id="lp"} 3.0' in scrape
        assert [100, 200] == [e["backoff_ms"] for e in narration.events("backoff")]
        assert 1 == len(narration.events("restart-storm", pool_id="lp"))

    async def test_exit_at_start_then_recovers(self, setup: LaunchedSetup) -> None:
        """One failed start, then the engine comes up on the next try after a backoff."""
        setup.faults.write_text("exit_at_start")
        async with running_server(setup.config()) as server:
            await wait_health(server, "lp", lambda h: h["restart_count"] >= 1)
            setup.faults.write_text("")
            health = await wait_health(server, "lp", _ready)
            assert process_of(health)["restart_storm"] is False

    async def test_never_healthy_counts_as_failed_start(self, setup: LaunchedSetup) -> None:
        """An engine that answers 503 forever is killed at the start-up timeout."""
        setup.faults.write_text("never_healthy")
        config = setup.config(startup_timeout_ms=600)
        async with running_server(config) as server:
            health = await wait_health(server, "lp", lambda h: h["restart_count"] >= 1)
            assert not health["ready"]
            scrape = (await server.client.get("/metrics")).text
            assert 'reason="never_ready"' in scrape
            # Where it was asked and for how long (an engine on a port of its own choosing).
            last_exit = process_of(health)["last_exit"]
            assert "/health did not answer 200 within engines.startup_timeout_ms" in last_exit
            assert "(600 ms)" in last_exit

    async def test_port_taken_restarts_on_another_port(self, setup: LaunchedSetup) -> None:
        """The first port is held by someone else: the engine exits, the next launch works."""
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            taken = holder.getsockname()[1]
            ports = iter([taken])

            def allocate() -> int:
                return next(ports, None) or free_port()

            def hook(sup: Supervision) -> Supervision:
                return dataclasses.replace(sup, allocate_port=allocate)

            async with running_server(setup.config(), supervision=hook) as server:
                health = await wait_health(server, "lp", _ready)
                assert 1 == health["restart_count"]
                assert "port" in process_of(health)["last_exit"]
                assert str(taken) not in process_of(health)["endpoint"]


def test_the_default_run_dir_follows_xdg_cache_home(tmp_path: Path) -> None:
    """Left at its default, engines.run_dir was ~/.cache/llama-orch/run whatever
    XDG_CACHE_HOME said, while the catalog beside it followed the variable."""
    with launched_setup(tmp_path) as setup:
        config = setup.config().model_dump(mode="json", exclude_unset=True)
        del config["engines"]["run_dir"]
        home, xdg = tmp_path / "home", tmp_path / "xdg"
        environ = {"HOME": str(home), "XDG_CACHE_HOME": str(xdg)}
        with serve_process(config, tmp_path, environ=environ):
            held = (xdg / "llama-orch" / "run" / LOCK_NAME).is_file()
    assert held
    assert not (home / ".cache" / "llama-orch" / "run").exists()
