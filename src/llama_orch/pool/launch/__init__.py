"""Launchers: start one engine process per replica and hand back a handle to it.

The interface is deliberately small (``launch``, then ``wait``/``stop``/``endpoint`` on the
handle, plus ``reap_orphans`` at start-up) so that a launcher backed by a distributed runtime can
later place replicas on other hosts without touching the pool manager or placement. ``local``
runs them as subprocesses of this process, each in its own process group.
"""

from __future__ import annotations

from llama_orch.pool.launch._types import (
    EngineHandle,
    ExitKind,
    HostInventories,
    Launcher,
    LaunchError,
    LaunchSpec,
    NoLiveHost,
    redact_argv,
)
from llama_orch.pool.launch.local import LocalLauncher, RunDirBusy, free_port, hold_run_dir

__all__ = [
    "EngineHandle",
    "ExitKind",
    "HostInventories",
    "LaunchError",
    "LaunchSpec",
    "Launcher",
    "LocalLauncher",
    "NoLiveHost",
    "RunDirBusy",
    "free_port",
    "hold_run_dir",
    "redact_argv",
]
