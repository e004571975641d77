"""LocalLauncher: each replica a subprocess of this process, in its own process group.

- ``CUDA_VISIBLE_DEVICES`` is the replica's device mask, so the engine sees only its GPUs.
- stdout and stderr go to ``<run_dir>/logs/<pool>-<replica>.log``, which starts with the command
  line, secrets redacted; the environment is never written anywhere. A log grown past
  ``log_max_bytes`` (``LOG_ROTATE_BYTES`` by default) moves to ``.log.1`` at the next launch,
  and while the engine runs ``tend`` (on the supervisor's probe cadence) copies it there and
  truncates it in place.
- ``<run_dir>/pids/<pool>-<replica>.pid`` records the process while it runs, written before it
  starts (its pid added once it runs). A pid file that outlives its server (a crash, a SIGKILL)
  names an orphan: ``reap_orphans`` stops it at the next start-up, after checking the pid still
  runs the recorded program (pids get reused); one without a pid, by the launch's mark.
- ``stop`` sends SIGTERM to the whole group, waits, then SIGKILLs it. Helpers the engine moved
  out of its group (``setsid``, a double fork) are found through ``_tree`` (the engine runs as
  a child subreaper, so they stay its descendants while it runs, and they carry the launch's
  environment mark) and stopped with it: no engine helper process survives its replica,
  whether it was stopped or exited. Container replicas are left to their runtime's cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from llama_orch.observability.narration import narrate
from llama_orch.pool.launch._tree import (
    MARK_VAR,
    as_subreaper,
    marked_roots,
    sweep,
    terminate,
    unrunnable,
)
from llama_orch.pool.launch._types import (
    ExitKind,
    LaunchError,
    LaunchSpec,
    read_log_tail,
    redact_argv,
)

#: How long ``reap_orphans`` waits for an orphan's group to exit after SIGTERM.
ORPHAN_GRACE_S = 5.0
#: The lock file of the run dir: the server holding it owns every pid file there.
LOCK_NAME = "serve.lock"
#: A replica's log past this size is moved to ``.log.1`` when its engine is launched again.
LOG_ROTATE_BYTES = 64 * 2**20
#: How much of its end a rotated log hands on to the new one (whole lines).
ROTATE_CARRY_BYTES = 8 * 1024
#: The most of what an engine wrote while its log was copied that the new log keeps (its end).
ROTATE_LATE_BYTES = 2**20


class RunDirBusy(Exception):
    """Another live server holds the run dir: its pid files name running engines, no orphans."""

    def __init__(self, run_dir: Path, holder: str) -> None:
        self.run_dir = run_dir
        self.holder = holder
        super().__init__(f"{run_dir} is held by process {holder or '(unknown)'}")


def hold_run_dir(run_dir: Path) -> int:
    """Lock ``run_dir`` for as long as this process lives; the descriptor that holds the lock.

    A second server on the same run dir would take the first one's pid files for a crashed
    run's and stop its engines. The kernel releases the lock when the process ends, however it
    ends (SIGKILL included), so the next server still finds the orphans. The descriptor is not
    inherited by engines, which must not keep the lock after their server died.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise RunDirBusy(run_dir, holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def run_cleanup(cleanup: tuple[str, ...], log_path: Path, timeout_s: float) -> None:
    """Run a replica's cleanup command (best effort), its output appended to the replica's log."""
    if not cleanup:
        return
    with log_path.open("ab") as log:
        log.write(f"--- cleanup: {' '.join(cleanup)}\n".encode())
        log.flush()
        try:
            proc = await asyncio.create_subprocess_exec(
                *cleanup, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
            async with asyncio.timeout(timeout_s):
                await proc.wait()
        except (OSError, TimeoutError) as exc:
            log.write(f"cleanup failed: {exc}\n".encode())


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the engine binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Not ours (a reused id now owned by someone else): leave it alone.
        return False
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def launch_record(spec: LaunchSpec, mark: str, pid: int | None) -> dict[str, object]:
    """What a pid file holds: enough for a later server to find and stop the engine."""
    return {
        "pid": pid,
        "argv0": spec.argv[0],
        "pool_id": spec.pool_id,
        "replica_id": spec.replica_id,
        "endpoint": spec.endpoint,
        "started_ms": int(time.time() * 1000),
        # Run again when the engine is reaped as an orphan (its container outlives it).
        "cleanup": list(spec.cleanup),
        # Finds the engine when no pid was recorded, and the helpers that left its group.
        "mark": mark,
    }


def write_record(pid_path: Path, record: dict[str, object]) -> None:
    """Replace the pid file at once: a reader finds the old record or the new one, whole."""
    tmp = pid_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(pid_path)


class LocalProcess:
    """The handle of one replica subprocess."""

    def __init__(
        self,
        spec: LaunchSpec,
        process: asyncio.subprocess.Process,
        log_path: Path,
        pid_path: Path,
        mark: str,
        log_max_bytes: int = LOG_ROTATE_BYTES,
        log_id: tuple[int, int] | None = None,
    ) -> None:
        self._spec = spec
        self._process = process
        self._log_path = log_path
        self._pid_path = pid_path
        self._mark = mark
        self._log_max_bytes = log_max_bytes
        #: (device, inode) of the file the engine writes its output to.
        self._log_id = log_id
        #: The engine's log file left its path (deleted or replaced); said once.
        self._log_detached = False

    @property
    def spec(self) -> LaunchSpec:
        return self._spec

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def endpoint(self) -> str:
        return self._spec.endpoint

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def host(self) -> None:
        return None

    @property
    def exit_kind(self) -> ExitKind | None:
        return None if self._process.returncode is None else ExitKind.EXITED

    @property
    def adopted(self) -> bool:
        return False

    async def wait(self) -> int:
        code = await self._process.wait()
        await self._forget()
        return code

    async def _forget(self) -> None:
        # Helpers the engine forked may outlive it; the group goes with the replica, and so do
        # the helpers that left it (found by the launch's mark: the engine's pid is reaped).
        _signal_group(self._process.pid, signal.SIGKILL)
        await self._sweep(None)
        with contextlib.suppress(FileNotFoundError):
            self._pid_path.unlink()

    async def stop(self, timeout_s: float = 10.0) -> int:
        pid = self._process.pid
        if self._process.returncode is None:
            _signal_group(pid, signal.SIGTERM)
            # A stopped (SIGSTOP) engine cannot act on SIGTERM until it is continued.
            _signal_group(pid, signal.SIGCONT)
            # Helpers outside the group get their SIGTERM too, at the same time.
            if self._mark:
                await asyncio.to_thread(terminate, pid, self._mark)
            try:
                async with asyncio.timeout(timeout_s):
                    await self._process.wait()
            except TimeoutError:
                await self._kill_all()
        code = await self.wait()
        await self._cleanup(timeout_s)
        return code

    async def _cleanup(self, timeout_s: float) -> None:
        await run_cleanup(self._spec.cleanup, self._log_path, timeout_s)

    async def kill(self) -> None:
        await self._kill_all()
        await self.wait()
        await self._cleanup(10.0)

    async def _kill_all(self) -> None:
        """SIGKILL the engine's helpers while the engine still runs (whatever they became, they
        are its descendants until then), then its group."""
        if self._process.returncode is None:
            await self._sweep(self._process.pid)
        _signal_group(self._process.pid, signal.SIGKILL)

    async def _sweep(self, root: int | None) -> None:
        # A container's runtime has processes of its own (its monitor outlives the client):
        # the replica's cleanup (``rm --force``) removes what the container ran.
        if self._mark:
            await asyncio.to_thread(sweep, root, self._mark)

    async def tend(self) -> None:
        """Keeps the running engine's log bounded: one stat per probe, the copy off the event
        loop (the engine's own writes cost nothing more)."""
        try:
            info = self._log_path.stat()
        except FileNotFoundError:
            info = None
        except OSError:
            return
        if self._log_id is not None and (
            info is None or (info.st_dev, info.st_ino) != self._log_id
        ):
            self._detached()
            return
        if info is not None and info.st_size > self._log_max_bytes:
            await asyncio.to_thread(rotate_running_log, self._log_path)

    def _detached(self) -> None:
        """The engine writes on to a file no longer at its log's path (it deleted the log, or
        something replaced it): rotation cannot reach it, its space is freed only when the
        engine stops, and its output is lost to the log. The engine holds that descriptor, so
        no new file can be put under it; the operator is told once."""
        if self._log_detached:
            return
        self._log_detached = True
        spec = self._spec
        narrate(
            "pool-manager",
            "log-detached",
            spec.pool_id,
            f"The engine of {spec.pool_id}/{spec.replica_id} (pid {self._process.pid}) writes "
            f"to a file no longer at {self._log_path}: it was deleted or replaced, so its output "
            "is lost to the log and its disk space is freed only when the engine stops; "
            f"restart the replica (reload pool {spec.pool_id}) to give it a new log (until "
            f"then /proc/{self._process.pid}/fd/1 still reads it).",
            level="warning",
            pool_id=spec.pool_id,
            replica_id=spec.replica_id,
            pid=self._process.pid,
            log_path=str(self._log_path),
        )

    def log_tail(self, lines: int = 20) -> str:
        return read_log_tail(self._log_path, lines)

    async def read_log_tail(self, lines: int = 20) -> str:
        return self.log_tail(lines)


class LocalLauncher:
    """Launches replicas as local subprocesses; logs and pid files live under ``run_dir``."""

    def __init__(self, run_dir: Path, *, log_max_bytes: int = LOG_ROTATE_BYTES) -> None:
        self.run_dir = run_dir.expanduser()
        self.logs_dir = self.run_dir / "logs"
        self.pids_dir = self.run_dir / "pids"
        self.log_max_bytes = log_max_bytes

    async def launch(self, spec: LaunchSpec) -> LocalProcess:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.pids_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"{spec.key}.log"
        pid_path = self.pids_dir / f"{spec.key}.pid"
        _rotate(log_path, self.log_max_bytes)
        shown = redact_argv(spec.argv, spec.secrets)
        # Every process the engine starts inherits the mark, wherever it moves, and stays its
        # descendant while it runs (see _tree); a container's runtime cleans up its own.
        mark = "" if spec.cleanup else uuid.uuid4().hex
        env = {**os.environ, **spec.env, "CUDA_VISIBLE_DEVICES": ",".join(map(str, spec.devices))}
        argv = spec.argv
        if mark:
            env[MARK_VAR] = mark
            why = unrunnable(argv[0], env.get("PATH"), spec.cwd)
            if why is not None:
                raise LaunchError(
                    f"cannot start {argv[0]} for {spec.pool_id}/{spec.replica_id}: {why}"
                )
            argv = as_subreaper(argv)
        # Recorded before the engine starts: a server killed between the start and the pid's
        # record would leave an engine no later server knows of. A record without a pid names
        # its engine by the mark (found through /proc) or its cleanup (a container's name).
        record = launch_record(spec, mark, None)
        try:
            write_record(pid_path, record)
        except OSError as exc:
            raise LaunchError(
                f"cannot write the pid file {pid_path} of {spec.pool_id}/{spec.replica_id}: "
                f"{exc.strerror or exc}; engines.run_dir must be a writable directory with "
                "free space (the engine was not started)"
            ) from exc
        # Append mode (O_APPEND), which the engine inherits: after a rotation truncated the log
        # in place, its next write lands at the new end, not past a hole.
        with log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            log.write(f"--- {stamp} launch: {' '.join(shown)}\n".encode())
            log.flush()
            opened = os.fstat(log.fileno())
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    cwd=spec.cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                pid_path.unlink(missing_ok=True)
                raise LaunchError(
                    f"cannot start {spec.argv[0]} for {spec.pool_id}/{spec.replica_id}: "
                    f"{exc.strerror or exc}"
                ) from exc
        try:
            write_record(pid_path, {**record, "pid": process.pid})
        except OSError as exc:
            # The record without its pid still names the engine (by its mark) should this
            # server die now; stopped here, it unlinks the record. Its group exists already
            # (the child made it before its exec, which create_subprocess_exec waits for).
            await LocalProcess(spec, process, log_path, pid_path, mark).kill()
            raise LaunchError(
                f"cannot write the pid file {pid_path} of {spec.pool_id}/{spec.replica_id}: "
                f"{exc.strerror or exc}; engines.run_dir must be a writable directory with "
                "free space (the engine was stopped)"
            ) from exc
        narrate(
            "pool-manager",
            "spawn",
            spec.pool_id,
            f"Starts replica {spec.pool_id}/{spec.replica_id} as pid {process.pid} on "
            f"{spec.endpoint}.",
            pool_id=spec.pool_id,
            replica_id=spec.replica_id,
            pid=process.pid,
            endpoint=spec.endpoint,
            device_mask=list(spec.devices),
            argv=shown,
            log_path=str(log_path),
        )
        log_id = (opened.st_dev, opened.st_ino)
        return LocalProcess(spec, process, log_path, pid_path, mark, self.log_max_bytes, log_id)

    async def close(self) -> None:
        """Every process this launcher started belongs to a replica, which stops it."""

    async def reap_orphans(self) -> list[int]:
        stopped: list[int] = []
        if not self.pids_dir.is_dir():
            return stopped
        for pid_path in sorted(self.pids_dir.glob("*.pid")):
            try:
                record = json.loads(pid_path.read_text())
                recorded = record["pid"]
                pid = None if recorded is None else int(recorded)
                argv0 = str(record["argv0"])
            except (OSError, ValueError, KeyError, TypeError):
                pid_path.unlink(missing_ok=True)
                continue
            mark = record.get("mark")
            mark = mark if isinstance(mark, str) else ""
            if pid is not None:
                cmdline = _cmdline(pid)
                # The recorded program, or the interpreter running it (scripts exec python).
                if cmdline and any(Path(argv0).name in part for part in cmdline):
                    stopped += await self._reap(pid, mark, record)
            elif mark:
                # Its server died before the pid was recorded: the engine is the process that
                # carries the launch's mark and whose parent does not (the mark proves it ours).
                for root in await asyncio.to_thread(marked_roots, mark):
                    stopped += await self._reap(root, mark, record)
            if mark:
                # Its helpers outside the group; by the mark alone (its pid may be reused).
                await asyncio.to_thread(sweep, None, mark)
            cleanup = record.get("cleanup")
            if isinstance(cleanup, list) and all(isinstance(a, str) for a in cleanup):
                # Whether or not its client still ran: the container may live on without it.
                self.logs_dir.mkdir(parents=True, exist_ok=True)
                log_path = self.logs_dir / f"{pid_path.stem}.log"
                await run_cleanup(tuple(cleanup), log_path, ORPHAN_GRACE_S * 2)
            pid_path.unlink(missing_ok=True)
        return stopped

    async def _reap(self, pid: int, mark: str, record: dict[str, object]) -> list[int]:
        """Stop an orphaned engine's group and its helpers outside it; [pid] when it ran."""
        if mark:
            await asyncio.to_thread(terminate, pid, mark)
        if not await self._stop_group(pid):
            return []
        narrate(
            "pool-manager",
            "reap",
            str(record.get("pool_id", "?")),
            f"Stops orphaned engine pid {pid} left by a previous run.",
            level="warning",
            pool_id=record.get("pool_id"),
            replica_id=record.get("replica_id"),
            pid=pid,
        )
        return [pid]

    async def _stop_group(self, pgid: int) -> bool:
        if not _signal_group(pgid, signal.SIGTERM):
            return False
        _signal_group(pgid, signal.SIGCONT)
        deadline = time.monotonic() + ORPHAN_GRACE_S
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if _gone(pgid):
                return True
        _signal_group(pgid, signal.SIGKILL)
        return True


def _rotate(log_path: Path, limit: int = LOG_ROTATE_BYTES) -> None:
    """Each launch appends to the replica's log; an engine that writes heaps of output and is
    restarted again and again would grow it without end. Past ``limit`` the log moves to
    ``.log.1`` (replacing the previous one) and the launch starts a fresh one."""
    with contextlib.suppress(FileNotFoundError):
        if log_path.stat().st_size > limit:
            log_path.replace(log_path.with_name(log_path.name + ".1"))


def rotate_running_log(log_path: Path) -> None:
    """Rotate the log of a running engine, which keeps writing through its own descriptor: the
    log is copied to ``.log.1`` (replacing the previous one) and truncated in place. The
    engine's descriptor is in append mode, so its next write lands at the new end. The new log
    starts with the old one's last lines (its tail stays the engine's last words) and what the
    engine wrote while the copy ran; only what lands between that last read and the truncation
    (an instant) can be lost. A copy that cannot be written (a full disk) is dropped, and the
    log is truncated all the same: the bound holds."""
    rotated = log_path.with_name(log_path.name + ".1")
    partial = log_path.with_name(log_path.name + ".1.tmp")
    try:
        with log_path.open("rb") as src, partial.open("wb") as dst:
            # What the log holds now, not up to an end an engine writing faster than the copy
            # runs would keep pushing away.
            copied = _copy_prefix(src, dst, os.fstat(src.fileno()).st_size)
        partial.replace(rotated)
        where = f"moved to {rotated.name}"
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        copied = 0
        where = f"dropped ({rotated.name} cannot be written: {exc.strerror or exc})"
    # Append mode, as the engine writes: no write of ours overwrites one of its own. A log
    # that cannot be opened or written now is tried again at the next probe.
    with contextlib.suppress(OSError), open(log_path, "a+b", buffering=0) as log:
        end = copied or log.seek(0, os.SEEK_END)
        log.seek(max(0, end - ROTATE_CARRY_BYTES))
        carried = log.read(min(end, ROTATE_CARRY_BYTES))
        total = log.seek(0, os.SEEK_END)
        # What came during the copy: its end only, should the engine have written heaps.
        log.seek(max(end, total - ROTATE_LATE_BYTES))
        late = log.read(ROTATE_LATE_BYTES)
        log.truncate(0)
        log.write(_rotation_note(end, where, carried) + late)


def _copy_prefix(src: BinaryIO, dst: BinaryIO, size: int) -> int:
    """Copy the first ``size`` bytes of ``src`` (fewer at its end); how many were copied."""
    copied = 0
    while copied < size:
        chunk = src.read(min(2**20, size - copied))
        if not chunk:
            break
        dst.write(chunk)
        copied += len(chunk)
    return copied


def _rotation_note(size: int, where: str, carried: bytes) -> bytes:
    """What a rotated log starts with: when and where its content went, and its last lines."""
    if size > ROTATE_CARRY_BYTES and b"\n" in carried:
        carried = carried.split(b"\n", 1)[1]  # the first line was cut midway
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    note = f"--- {stamp} log rotated: its {size} bytes {where}; the last lines:\n"
    # Nothing after them: an engine that exits now is quoted by its own last line.
    return note.encode() + carried


def _gone(pid: int) -> bool:
    """The process no longer runs: absent, or a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"
