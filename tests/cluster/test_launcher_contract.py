"""What every launcher does, run against the local and the Ray launcher alike.

The Ray launcher places on host gpu-a of a local Ray cluster; the engines are the fake engines
launched as real processes (simulated).
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llama_orch.pool.launch import (
    EngineHandle,
    ExitKind,
    Launcher,
    LaunchSpec,
    LocalLauncher,
    free_port,
)
from llama_orch.pool.launch.ray import RayLauncher
from llama_orch.testing.fake_engines.release import escaping_script
from tests.support.cluster import HOSTS, engine_actors, engines_running, kill_engine
from tests.support.engines import engine_healthy, fake_executable, tiny_gguf

# The first test of the package also waits for the cluster to start (about 10-30 s).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def engine_spec(
    tmp_path: Path, *, node: str | None, devices: tuple[int, ...] = (1,), replica: str = "r0"
) -> LaunchSpec:
    exe = fake_executable(tmp_path / "bin", "llama-server")
    model = tiny_gguf(tmp_path / "models")
    port = free_port()
    argv = (str(exe), "--model", str(model), "--host", "127.0.0.1", "--port", str(port))
    env = {"LLAMA_API_KEY": "sk-secret-value-123456"}
    return LaunchSpec(
        "p0",
        replica,
        argv,
        port,
        devices=devices,
        env=env,
        secrets=(env["LLAMA_API_KEY"],),
        node=node,
    )


@pytest.fixture(params=["local", "ray"])
async def launcher(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Launcher, str | None]]:
    if request.param == "local":
        yield LocalLauncher(tmp_path / "run"), None
    else:
        request.getfixturevalue("cluster")
        yield RayLauncher(HOSTS, log_dir=str(tmp_path / "logs")), HOSTS[0].name
    assert [] == engines_running(tmp_path / "models"), "an engine outlived its test"
    if request.param == "ray":
        assert [] == engine_actors(), "an engine actor outlived its replica"


async def launched(launcher: tuple[Launcher, str | None], tmp_path: Path) -> EngineHandle:
    handle = await launcher[0].launch(engine_spec(tmp_path, node=launcher[1]))
    await engine_healthy(handle.endpoint)
    return handle


class TestLauncherContract:
    async def test_launch_serves_with_the_mask_and_stops_on_sigterm(
        self, launcher: tuple[Launcher, str | None], tmp_path: Path
    ) -> None:
        """The engine serves on its endpoint, sees only its mask, and exits 0 on stop."""
        handle = await launched(launcher, tmp_path)
        assert handle.pid is not None and handle.returncode is None and handle.exit_kind is None
        assert handle.host == launcher[1]
        assert "CUDA_VISIBLE_DEVICES=1," in await handle.read_log_tail(5)
        assert 0 == await handle.stop(timeout_s=10)
        assert ExitKind.EXITED == handle.exit_kind

    async def test_an_engine_that_dies_is_exited(
        self, launcher: tuple[Launcher, str | None], tmp_path: Path
    ) -> None:
        """Killing the engine process ends ``wait`` with its signal and kind ``exited``."""
        handle = await launched(launcher, tmp_path)
        assert handle.pid is not None
        kill_engine(handle.pid)
        assert -signal.SIGKILL == await asyncio.wait_for(handle.wait(), 30)
        assert ExitKind.EXITED == handle.exit_kind
        await handle.stop(timeout_s=1)

    async def test_kill_leaves_no_process(
        self, launcher: tuple[Launcher, str | None], tmp_path: Path
    ) -> None:
        """``kill`` ends the engine's whole process group at once."""
        handle = await launched(launcher, tmp_path)
        await handle.kill()
        assert handle.returncode is not None
        assert [] == engines_running(tmp_path / "models")

    @pytest.mark.parametrize("ending", ["stop", "kill", "exit"])
    async def test_helpers_that_left_the_group_go_with_the_engine(
        self, launcher: tuple[Launcher, str | None], tmp_path: Path, ending: str
    ) -> None:
        """A wrapper that ``setsid``s one helper and double-forks another: whether the engine
        is stopped, killed or exits by itself, none of them outlives it."""
        marker = f"helper-of-{uuid.uuid4().hex}"
        spec = engine_spec(tmp_path, node=launcher[1])
        # The fake engine's executable, now behind the escaping wrapper.
        (tmp_path / "bin" / "llama-server").write_text(escaping_script("llama-server", marker))
        handle = await launcher[0].launch(spec)
        await engine_healthy(handle.endpoint)
        helpers = lambda: engines_running(Path(marker))  # noqa: E731 - read at each poll
        for _ in range(400):
            if len(helpers()) == 2:
                break
            await asyncio.sleep(0.05)
        assert 2 == len(helpers())
        if ending == "stop":
            await handle.stop(timeout_s=10)
        elif ending == "kill":
            await handle.kill()
        else:
            assert handle.pid is not None
            kill_engine(handle.pid)
            await asyncio.wait_for(handle.wait(), 30)
            await handle.stop(timeout_s=1)
        for _ in range(400):
            if not helpers():
                break
            await asyncio.sleep(0.05)
        assert [] == helpers()

    async def test_a_chatty_engines_log_is_rotated_while_it_runs(
        self, launcher: tuple[Launcher, str | None], tmp_path: Path
    ) -> None:
        """3 MB of log lines against a 128 KiB bound: ``tend`` (called at every probe) keeps the
        running engine's log within it, wherever the engine runs."""
        limit = 128 * 1024
        first = launcher[0]
        assert isinstance(first, LocalLauncher | RayLauncher)
        first.log_max_bytes = limit
        faults = tmp_path / "faults"
        faults.write_text("chatty:3000000")
        spec = engine_spec(tmp_path, node=launcher[1])
        spec = dataclasses.replace(spec, env={**spec.env, "FAKE_ENGINE_FAULTS": str(faults)})
        handle = await first.launch(spec)
        log = handle.log_path or tmp_path / "logs" / "p0-r0.log"
        try:
            await engine_healthy(handle.endpoint)
            for _ in range(600):
                await handle.tend()
                if "chatty done" in _text(log) and _size(log) <= limit + 9000:
                    break
                await asyncio.sleep(0.05)
            assert "simulated: chatty done" in _text(log)
            assert _size(log) <= limit + 9000
            assert "log rotated" in _text(log)
        finally:
            assert 0 == await handle.stop(timeout_s=10)

    async def test_the_next_start_stops_what_a_crashed_run_left(
        self, launcher: tuple[Launcher, str | None], tmp_path: Path
    ) -> None:
        """A replica left running by a server that died is stopped by the next start-up."""
        handle = await launched(launcher, tmp_path)
        first, host = launcher
        again: Launcher
        if isinstance(first, LocalLauncher):
            again = LocalLauncher(first.run_dir)
        else:
            again = RayLauncher(HOSTS, log_dir=str(tmp_path / "logs"))
        assert [handle.pid] == await again.reap_orphans()
        for _ in range(200):
            if not engines_running(tmp_path / "models"):
                break
            await asyncio.sleep(0.05)
        assert [] == engines_running(tmp_path / "models")
        await handle.stop(timeout_s=1)
        del host


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
