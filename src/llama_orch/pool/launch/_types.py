"""The launcher port: what a replica launch needs and what it hands back."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from llama_orch.observability.redaction import REDACTED, Redactor
from llama_orch.pool.gpus import GpuInventory

#: A flag whose value is a secret, e.g. ``--api-key X`` or ``--hf-token=X``.
_SECRET_FLAG = re.compile(r"(?i)^--?[a-z0-9-]*(key|token|secret|password)[a-z0-9-]*$")
_REDACTOR = Redactor()


class ExitKind(StrEnum):
    """How a replica's engine ended."""

    #: The engine process exited (or was stopped).
    EXITED = "exited"
    #: The process that owned the engine died while its host stayed up.
    ACTOR_DIED = "actor_died"
    #: The engine's host left the cluster.
    NODE_LOST = "node_lost"
    #: The cluster's head became unreachable: the server let go of every cluster replica.
    HEAD_LOST = "head_lost"


class LaunchError(Exception):
    """A replica process could not be started; the message says what to fix."""


class NoLiveHost(LaunchError):
    """No cluster host can take the replica right now (none is live, or none live has its
    GPUs): the replica waits for the cluster; its engine did not fail."""


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """One replica's process: its command, environment and where its traces go."""

    pool_id: str
    replica_id: str
    argv: tuple[str, ...]
    #: The port the engine listens on (allocated by the caller; the engine binds it).
    port: int
    host: str = "127.0.0.1"
    #: GPUs of the replica's device mask; the process sees only these.
    devices: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    #: Secrets the command or environment holds; replaced in every logged command line.
    secrets: tuple[str, ...] = ()
    #: Run after the process stopped (e.g. remove its container); best effort.
    cleanup: tuple[str, ...] = ()
    #: The configured host the replica should run on (None: this machine).
    node: str | None = None

    @property
    def key(self) -> str:
        return f"{self.pool_id}-{self.replica_id}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"


class EngineHandle(Protocol):
    """A running (or exited) replica process."""

    @property
    def spec(self) -> LaunchSpec: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def endpoint(self) -> str: ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def log_path(self) -> Path | None: ...

    @property
    def host(self) -> str | None:
        """The host the engine runs on (None: this machine)."""
        ...

    @property
    def exit_kind(self) -> ExitKind | None:
        """How it ended; None while it runs."""
        ...

    @property
    def adopted(self) -> bool:
        """Taken over from a previous server rather than started by this one."""
        ...

    async def wait(self) -> int:
        """Until the process exits; its exit status (negative: killed by that signal)."""
        ...

    async def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM the process group, wait up to ``timeout_s``, then SIGKILL it."""
        ...

    async def kill(self) -> None:
        """SIGKILL the process group at once (a hung engine)."""
        ...

    def log_tail(self, lines: int = 20) -> str:
        """The log's last lines as last read (a remote engine's log is read when it ends)."""
        ...

    async def read_log_tail(self, lines: int = 20) -> str:
        """The log's last lines now (read from the engine's host where it runs elsewhere)."""
        ...

    async def tend(self) -> None:
        """Housekeeping while the engine runs, called on the supervisor's probe cadence (keeps
        its log bounded); cheap when there is nothing to do."""
        ...


class Launcher(Protocol):
    async def launch(self, spec: LaunchSpec) -> EngineHandle: ...

    async def reap_orphans(self) -> list[int]:
        """Stop processes left by a previous run that crashed; the pids stopped."""
        ...

    async def close(self) -> None:
        """At shutdown: stop what the launcher still holds that no replica took over."""
        ...


class HostInventories(Protocol):
    """The GPU inventories of the cluster's hosts, each asked by an agent on its host."""

    async def host_inventories(self, deadline_s: float) -> dict[str, GpuInventory | None]:
        """host -> its inventory; None for a host that did not answer within ``deadline_s``
        (gone, hung or unreachable); a host with no verdict yet (its agent starts) is left
        out. Never blocks the event loop."""
        ...


class ClusterLauncher(Launcher, HostInventories, Protocol):
    """Launches on the cluster's hosts and reports their inventories."""


#: How much of the end of an engine log its tail is read from: an engine may dump megabytes
#: (binary garbage, one endless line) before it dies, and the tail is read at every exit.
TAIL_BYTES = 64 * 1024


def read_log_tail(path: str | Path, lines: int) -> str:
    """The last ``lines`` lines of an engine log, from its last ``TAIL_BYTES`` only."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read(TAIL_BYTES)
    except OSError:
        return ""
    text = data.decode(errors="replace").rstrip()
    if size > TAIL_BYTES and "\n" in text:
        text = text.split("\n", 1)[1]  # the first line was cut midway
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


def redact_argv(argv: tuple[str, ...] | list[str], secrets: tuple[str, ...] = ()) -> list[str]:
    """The command line as it may be logged: secret flag values and known secrets replaced."""
    redactor = _REDACTOR.with_secret(None)
    for secret in secrets:
        redactor = redactor.with_secret(secret)
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _value = arg.partition("=")
        if _SECRET_FLAG.match(flag):
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redactor.text(arg))
    return out
