"""LocalLauncher: real engine subprocesses with masks, logs, pid files, stop and orphan reaping."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import tracemalloc
import uuid
from pathlib import Path

import pytest

from llama_orch.pool.launch import LaunchError, LaunchSpec, LocalLauncher, free_port, redact_argv
from llama_orch.pool.launch._types import read_log_tail
from llama_orch.pool.launch.local import (
    LOG_ROTATE_BYTES,
    ROTATE_CARRY_BYTES,
    _cmdline,
    _gone,
)
from llama_orch.testing.fake_engines.release import escaping_script
from tests.support.engines import engine_healthy, fake_executable, tiny_gguf
from tests.support.narration import NarrationLog


def _spec(tmp_path: Path, *, api_key: str = "sk-secret-value-123456") -> LaunchSpec:
    exe = fake_executable(tmp_path / "bin", "llama-server")
    model = tiny_gguf(tmp_path / "models")
    port = free_port()
    argv = (str(exe), "--model", str(model), "--port", str(port), "--api-key", api_key)
    return LaunchSpec("p0", "r0", argv, port, devices=(1, 0), secrets=(api_key,))


class TestLocalLauncher:
    async def test_launch_logs_mask_and_redacted_command(self, tmp_path: Path) -> None:
        """The engine sees only its mask; the log shows the command without its secret."""
        launcher = LocalLauncher(tmp_path / "run")
        spec = _spec(tmp_path)
        handle = await launcher.launch(spec)
        try:
            await engine_healthy(handle.endpoint)
            assert (tmp_path / "run/pids/p0-r0.pid").exists()
        finally:
            code = await handle.stop(timeout_s=10)
        log = handle.log_path.read_text()
        assert "CUDA_VISIBLE_DEVICES=1,0" in log
        assert "sk-secret-value-123456" not in log
        assert "--api-key [REDACTED]" in log
        assert 0 == code
        assert not (tmp_path / "run/pids/p0-r0.pid").exists()

    async def test_stop_kills_a_stopped_engine(self, tmp_path: Path) -> None:
        """A SIGSTOPped engine that cannot honour SIGTERM in time is killed."""
        launcher = LocalLauncher(tmp_path / "run")
        handle = await launcher.launch(_spec(tmp_path))
        await engine_healthy(handle.endpoint)
        assert handle.pid is not None
        os.kill(handle.pid, signal.SIGSTOP)
        code = await handle.stop(timeout_s=0.2)
        assert code in (0, -signal.SIGKILL, -signal.SIGTERM)
        assert handle.returncode is not None

    async def test_reap_orphans_stops_what_a_crashed_run_left(self, tmp_path: Path) -> None:
        """A pid file outliving its launcher names an orphan that the next start-up stops."""
        handle = await LocalLauncher(tmp_path / "run").launch(_spec(tmp_path))
        await engine_healthy(handle.endpoint)
        stopped = await LocalLauncher(tmp_path / "run").reap_orphans()
        assert [handle.pid] == stopped
        assert 0 == await asyncio.wait_for(handle.wait(), 10)
        assert [] == list((tmp_path / "run/pids").glob("*.pid"))

    async def test_reap_runs_the_cleanup_of_an_orphan(self, tmp_path: Path) -> None:
        """A container replica's cleanup (``podman rm --force <name>``) runs when its orphan
        is reaped: a container left behind by a crashed server would hold its GPUs, and its
        name would refuse every new launch of the replica."""
        cleaned = tmp_path / "cleaned"
        spec = dataclasses.replace(_spec(tmp_path), cleanup=("sh", "-c", f"echo rm > {cleaned}"))
        handle = await LocalLauncher(tmp_path / "run").launch(spec)
        await engine_healthy(handle.endpoint)
        assert [handle.pid] == await LocalLauncher(tmp_path / "run").reap_orphans()
        await asyncio.wait_for(handle.wait(), 10)
        assert "rm" == cleaned.read_text().strip()

    async def test_reap_ignores_a_reused_pid(self, tmp_path: Path) -> None:
        """A pid file whose pid now runs another program is removed, the process untouched."""
        pids = tmp_path / "run/pids"
        pids.mkdir(parents=True)
        (pids / "p0-r0.pid").write_text(f'{{"pid": {os.getpid()}, "argv0": "llama-server"}}')
        assert [] == await LocalLauncher(tmp_path / "run").reap_orphans()
        assert not (pids / "p0-r0.pid").exists()


class TestRedactArgv:
    def test_secret_flags_and_values(self) -> None:
        """Values of key/token flags, in both spellings, and known secrets are hidden."""
        argv = ["vllm", "serve", "m", "--api-key", "abc", "--hf-token=hf_abcdefghijk", "x"]
        assert [
            "vllm",
            "serve",
            "m",
            "--api-key",
            "[REDACTED]",
            "--hf-token=[REDACTED]",
            "x",
        ] == redact_argv(argv)


class TestEngineLog:
    async def test_the_tail_of_a_huge_log_is_read_in_bounded_memory(self, tmp_path: Path) -> None:
        """An engine that dumps 20 MB without a newline before it exits (binary garbage): the
        tail shown as its last error is read from the end of the log, in bounded memory."""
        spew = "head -c 20000000 /dev/zero | tr '\\0' x; printf '\\nCUDA error: out of memory'"
        spec = LaunchSpec("p0", "r0", ("sh", "-c", f"{spew}; exit 3"), free_port())
        handle = await LocalLauncher(tmp_path / "run").launch(spec)
        assert 3 == await asyncio.wait_for(handle.wait(), 30)
        tracemalloc.start()
        try:
            tail = handle.log_tail(3)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert tail.endswith("CUDA error: out of memory")
        assert len(tail) < 70_000
        assert peak < 2_000_000

    async def test_a_pid_file_that_cannot_be_written_leaves_no_engine(self, tmp_path: Path) -> None:
        """The engine started but its pid file could not be recorded (a full or broken run
        dir): nothing would ever stop that process. The launch fails as a LaunchError naming
        the file, and the engine it started is stopped."""
        launcher = LocalLauncher(tmp_path / "run")
        (tmp_path / "run/pids/p0-r0.tmp").mkdir(parents=True)
        marker = f"engine-of-{uuid.uuid4().hex}"  # tmp_path's name repeats across runs
        argv = ("sh", "-c", f"sleep 60; : {marker}")
        with pytest.raises(LaunchError, match="pid file"):
            await launcher.launch(LaunchSpec("p0", "r0", argv, free_port()))
        # The kill is sent; a loaded machine may take a moment to end the process. An engine
        # left running would still be there after the bound.
        for _ in range(200):
            if not _running_with(marker):
                break
            await asyncio.sleep(0.05)
        assert [] == _running_with(marker)


def _escaping_spec(tmp_path: Path, marker: str, *, scrub_env: bool = False) -> LaunchSpec:
    """The fake llama-server behind a wrapper whose helpers leave the engine's process group."""
    exe = tmp_path / "bin" / "llama-server"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text(escaping_script("llama-server", marker, scrub_env=scrub_env))
    exe.chmod(0o755)
    model = tiny_gguf(tmp_path / "models")
    port = free_port()
    return LaunchSpec("p0", "r0", (str(exe), "--model", str(model), "--port", str(port)), port)


async def _until(predicate: object, what: str) -> None:
    """Poll ``predicate`` (bounded: a loaded machine is slow, a leak stays)."""
    assert callable(predicate)
    for _ in range(400):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


class TestEscapedHelpers:
    """An engine wrapper that calls ``setsid`` or double-forks leaves helpers outside the
    engine's process group, which a group kill misses: they would hold the GPU and the port."""

    async def test_stop_ends_the_helpers_that_left_the_group(self, tmp_path: Path) -> None:
        marker = f"helper-of-{uuid.uuid4().hex}"
        spec = _escaping_spec(tmp_path, marker, scrub_env=True)
        handle = await LocalLauncher(tmp_path / "run").launch(spec)
        try:
            await engine_healthy(handle.endpoint)
            await _until(lambda: len(_running_with(marker)) == 4, "the helpers never started")
        finally:
            await handle.stop(timeout_s=10)
        await _until(lambda: not _running_with(marker), f"left running: {_running_with(marker)}")
        assert [] == _running_with(marker)

    async def test_an_engine_that_exits_takes_its_helpers(self, tmp_path: Path) -> None:
        """A crashed engine's helpers go before it is launched again (they hold its port)."""
        marker = f"helper-of-{uuid.uuid4().hex}"
        handle = await LocalLauncher(tmp_path / "run").launch(_escaping_spec(tmp_path, marker))
        try:
            await engine_healthy(handle.endpoint)
            await _until(lambda: len(_running_with(marker)) == 2, "the helpers never started")
            assert handle.pid is not None
            os.kill(handle.pid, signal.SIGKILL)
            assert -signal.SIGKILL == await asyncio.wait_for(handle.wait(), 30)
        finally:
            await handle.stop(timeout_s=10)
        await _until(lambda: not _running_with(marker), f"left running: {_running_with(marker)}")

    async def test_an_orphans_helpers_are_reaped_with_it(self, tmp_path: Path) -> None:
        """A server that died (SIGKILL) left its engine and the engine's helpers: the next
        start-up stops all of them."""
        marker = f"helper-of-{uuid.uuid4().hex}"
        handle = await LocalLauncher(tmp_path / "run").launch(_escaping_spec(tmp_path, marker))
        await engine_healthy(handle.endpoint)
        await _until(lambda: len(_running_with(marker)) == 2, "the helpers never started")
        assert [handle.pid] == await LocalLauncher(tmp_path / "run").reap_orphans()
        await asyncio.wait_for(handle.wait(), 10)
        await _until(lambda: not _running_with(marker), f"left running: {_running_with(marker)}")

    async def test_a_program_that_cannot_run_is_a_launch_error(self, tmp_path: Path) -> None:
        """The engine's command is exec'd by a small interpreter (which makes it a child
        subreaper): a missing or non-executable program is still refused by the launch itself,
        naming the program, rather than seen later as an exit."""
        script = tmp_path / "not-executable"
        script.write_text("#!/bin/sh\n")
        launcher = LocalLauncher(tmp_path / "run")
        for argv0, why in (
            (str(tmp_path / "missing"), "No such file or directory"),
            ("llorch-no-such-program", "No such file or directory"),
            (str(script), "Permission denied"),
        ):
            with pytest.raises(LaunchError, match=f"cannot start {argv0} for p0/r0: {why}"):
                await launcher.launch(LaunchSpec("p0", "r0", (argv0,), free_port()))

    async def test_the_launchs_processes_only(self, tmp_path: Path) -> None:
        """A process the engine did not start, in a session of its own, is left alone."""
        marker = f"bystander-{uuid.uuid4().hex}"
        bystander = await asyncio.create_subprocess_exec(
            "sh", "-c", f"sleep 600; : {marker}", start_new_session=True
        )
        try:
            handle = await LocalLauncher(tmp_path / "run").launch(_spec(tmp_path))
            await engine_healthy(handle.endpoint)
            await handle.stop(timeout_s=10)
            assert bystander.returncode is None and _running_with(marker)
        finally:
            os.killpg(bystander.pid, signal.SIGKILL)
            await bystander.wait()


def _running_with(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        pid = int(entry.name) if entry.name.isdigit() else 0
        if pid and marker in " ".join(_cmdline(pid)) and not _gone(pid):
            found.append(pid)
    return found


class TestLogGrowth:
    async def test_a_log_grown_past_its_bound_is_rotated_at_the_next_launch(
        self, tmp_path: Path
    ) -> None:
        """An engine that writes heaps of stderr and keeps being restarted would grow its log
        without end: past ``LOG_ROTATE_BYTES`` the next launch moves it to ``.log.1``
        (replacing an older one) and starts afresh, so a replica holds at most two."""
        logs = tmp_path / "run/logs"
        logs.mkdir(parents=True)
        with (logs / "p0-r0.log").open("wb") as big:
            big.truncate(LOG_ROTATE_BYTES + 1)  # sparse: costs no disk
        (logs / "p0-r0.log.1").write_text("older")
        handle = await LocalLauncher(tmp_path / "run").launch(
            LaunchSpec("p0", "r0", ("sh", "-c", "echo fresh"), free_port())
        )
        assert 0 == await asyncio.wait_for(handle.wait(), 30)
        assert LOG_ROTATE_BYTES + 1 == (logs / "p0-r0.log.1").stat().st_size
        assert "fresh" in (logs / "p0-r0.log").read_text()
        assert (logs / "p0-r0.log").stat().st_size < 4096


#: Writes 4 MB of numbered lines as fast as it can, then idles; says goodbye on SIGTERM.
_CHATTY = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("last words", flush=True), sys.exit(0)))
for i in range(40000):
    print(f"line {i:06d} " + "x" * 90)
print("all written", flush=True)
while True:
    time.sleep(1)
"""


class TestLiveLogRotation:
    async def test_a_running_engines_log_stays_bounded(self, tmp_path: Path) -> None:
        """A chatty engine that runs for weeks would fill the disk before its next launch:
        ``tend`` (the supervisor calls it at every probe) rotates the log while the engine
        writes to it. The engine's descriptor is in append mode, so after the truncation its
        writes land at the new end (no hole of NULs), and the last lines are kept."""
        limit = 256 * 1024
        launcher = LocalLauncher(tmp_path / "run", log_max_bytes=limit)
        spec = LaunchSpec("p0", "r0", (sys.executable, "-c", _CHATTY), free_port())
        handle = await launcher.launch(spec)
        log, old = handle.log_path, handle.log_path.with_name("p0-r0.log.1")
        try:
            assert handle.pid is not None
            assert _fd_flags(handle.pid, 1) & os.O_APPEND
            rotations = 0
            for _ in range(1500):
                before = log.stat().st_size
                await handle.tend()
                rotations += log.stat().st_size < before
                # The launch line quotes the program: the line alone says it is done.
                if "all written" in (handle.log_tail(5) + "\n" + _tail(old)).splitlines():
                    break
                await asyncio.sleep(0.02)
            await handle.tend()  # nothing is written any more: the log is within its bound
            size = log.stat().st_size
        finally:
            assert 0 == await handle.stop(timeout_s=10)
        assert rotations >= 1
        assert size <= limit + ROTATE_CARRY_BYTES + 200
        text = log.read_bytes()
        assert b"\0" not in text
        assert "line 039999" in text.decode() and "\nall written\n" in text.decode()
        assert text.decode().rstrip().endswith("last words")
        assert "line" in _tail(old)

    async def test_a_rotation_keeps_the_engines_last_line_last(self, tmp_path: Path) -> None:
        """An engine that exits right after its log was rotated is quoted by its own last line,
        not by a line of the rotation."""
        code = "import sys, time; print('x' * 80000); print('FATAL: out of memory', flush=True)"
        code += "; time.sleep(600)"
        launcher = LocalLauncher(tmp_path / "run", log_max_bytes=64 * 1024)
        handle = await launcher.launch(
            LaunchSpec("p0", "r0", (sys.executable, "-c", code), free_port())
        )
        try:
            for _ in range(400):
                if handle.log_tail(1) == "FATAL: out of memory":
                    break
                await asyncio.sleep(0.05)
            await handle.tend()
            assert "log rotated" in handle.log_path.read_text()
            assert "FATAL: out of memory" == handle.log_tail(1)
        finally:
            await handle.stop(timeout_s=10)


def _fd_flags(pid: int, fd: int) -> int:
    """The open flags of a process's descriptor."""
    info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
    return int(info.split("flags:")[1].split()[0], 8)


def _tail(path: Path) -> str:
    return read_log_tail(path, 5)


class TestDeletedLog:
    async def test_an_engine_that_deleted_its_log_is_reported_once(
        self, tmp_path: Path, narration: NarrationLog
    ) -> None:
        """An engine that removes its own log writes on to a deleted file: rotation cannot see
        it, its space is not freed and its output is lost. ``tend`` says so once, naming the
        replica and the path, with what the operator can do."""
        token = uuid.uuid4().hex
        marker = f"gone-{token}"  # printed as two pieces: the launch line quotes the code
        log = tmp_path / "run" / "logs" / "p0-r0.log"
        code = (
            "import os, sys, time\n"
            f"os.unlink({str(log)!r})\n"
            f"print('gone-' + {token!r}, flush=True)\n"
            "time.sleep(600)\n"
        )
        handle = await LocalLauncher(tmp_path / "run").launch(
            LaunchSpec("p0", "r0", (sys.executable, "-c", code), free_port())
        )
        try:
            assert handle.pid is not None
            stdout = Path(f"/proc/{handle.pid}/fd/1")
            for _ in range(400):  # until the engine removed its log and wrote past it
                if marker in _tail(stdout):
                    break
                await asyncio.sleep(0.05)
            await handle.tend()
            await handle.tend()
        finally:
            await handle.stop(timeout_s=10)
        [event] = narration.events("log-detached", pool_id="p0", replica_id="r0")
        assert str(log) == event["log_path"]
        assert str(log) in event["human"] and "p0/r0" in event["human"]
        assert "restart" in event["human"]
