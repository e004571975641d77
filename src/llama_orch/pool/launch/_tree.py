"""The processes one engine launch left behind, found through /proc (Linux).

An engine runs in its own process group, which ``stop`` signals. A helper that calls ``setsid``
(or double-forks into its own session, as daemons do) leaves that group, and one whose parent
exited is re-parented away from the engine: a group kill misses both, and they keep the GPU and
the engine's port. Two facts find them without touching anything else:

- while the engine runs, its descendants are the processes whose parent chain leads to it;
- every process the engine starts inherits its environment, where the launch put
  ``LLORCH_ENGINE_MARK=<random token>`` (one token per launch): a process carrying it came from
  that launch, wherever it was re-parented to.

The engine is started as a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``, set by a few
lines of Python that then exec the engine's command; the flag survives the exec): a helper
that double-forks is re-parented to the engine rather than to init, so while the engine runs
every process it started is its descendant, even one that cleared its environment.

Signals go through a pidfd opened after the process was identified, so a pid reused meanwhile
is never signalled.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import time
from pathlib import Path

#: The environment variable that marks every process of one engine launch.
MARK_VAR = "LLORCH_ENGINE_MARK"
#: Makes the process a child subreaper, then execs ``sys.argv[1:]`` (the engine's command).
_SUBREAPER_EXEC = """
import ctypes, os, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
except (AttributeError, OSError):
    pass  # not Linux: descendants are found by the mark alone
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as exc:
    print(f"cannot start {sys.argv[1]}: {exc.strerror or exc}", file=sys.stderr, flush=True)
    sys.exit(127)
"""


def as_subreaper(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The command line that runs ``argv`` as a child subreaper (an isolated interpreter that
    reads no site or user configuration, then becomes ``argv`` by exec)."""
    return (sys.executable, "-I", "-S", "-c", _SUBREAPER_EXEC, *argv)


def unrunnable(argv0: str, path: str | None, cwd: Path | None) -> str | None:
    """Why ``argv0`` cannot be executed (as exec would say it), or None: the launch reports it
    at once rather than as the exit of the interpreter that would exec it."""
    if "/" not in argv0:
        return None if shutil.which(argv0, path=path) else "No such file or directory"
    candidate = Path(argv0) if Path(argv0).is_absolute() else Path(cwd or ".") / argv0
    if not candidate.exists():
        return "No such file or directory"
    return None if candidate.is_file() and os.access(candidate, os.X_OK) else "Permission denied"


#: How long a sweep waits, in all, for the processes it killed to be gone.
_SWEEP_WAIT_S = 5.0


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of a process; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def _live() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process that runs (zombies left out)."""
    found: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[0] != "Z":
            found[int(entry.name)] = (stat[1], stat[2])
    return found


def carries(pid: int, mark: str) -> bool:
    """Whether the process's environment holds this launch's mark (unreadable: it does not)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARK_VAR}={mark}".encode() in environ.split(b"\0")


def marked_roots(mark: str) -> list[int]:
    """The live processes that carry ``mark`` and whose parent does not: the engine of a launch
    whose pid was never recorded (its server died first); its helpers are its descendants."""
    live = _live()
    me = os.getpid()
    ours = {pid for pid in live if pid != me and carries(pid, mark)}
    return sorted(pid for pid in ours if live[pid][0] not in ours)


def leftovers(root: int | None, mark: str) -> dict[int, int]:
    """pid -> process group of every live process of the launch but ``root`` itself: the
    descendants of ``root`` and whatever carries ``mark``, with their descendants. ``root`` is
    the engine's own pid while it is not reaped yet (None after: the pid may be reused)."""
    live = _live()
    me = os.getpid()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in live.items():
        children.setdefault(ppid, []).append(pid)
    seeds = [root] if root is not None and root in live else []
    seeds += [pid for pid in live if pid not in (root, me) and carries(pid, mark)]
    found: set[int] = set()
    while seeds:
        pid = seeds.pop()
        if pid in found:
            continue
        found.add(pid)
        seeds.extend(children.get(pid, ()))
    found.discard(me)
    if root is not None:
        found.discard(root)
    return {pid: live[pid][1] for pid in found if pid in live}


def _signal(pid: int, sig: signal.Signals, root: int | None, mark: str, known: set[int]) -> bool:
    """Signal one process of the launch; False when it is gone or no longer one of them."""
    try:
        fd: int | None = os.pidfd_open(pid)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            return False
        fd = None  # a kernel before 5.3: identified, then signalled by pid
    try:
        # Identified again through the pidfd: the pid cannot be reused while the fd is open.
        stat = _stat(pid)
        if stat is None or not (stat[1] in known or stat[1] == root or carries(pid, mark)):
            return False
        if fd is None:
            os.kill(pid, sig)
        else:
            signal.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


def terminate(root: int, mark: str) -> int:
    """SIGTERM (and SIGCONT) what the launch runs outside ``root``'s own process group, which
    the caller signals as a whole; how many processes were signalled."""
    found = leftovers(root, mark)
    known = set(found)
    sent = 0
    for pid, group in found.items():
        if group != root and _signal(pid, signal.SIGTERM, root, mark, known):
            _signal(pid, signal.SIGCONT, root, mark, known)
            sent += 1
    return sent


def sweep(root: int | None, mark: str) -> int:
    """SIGKILL every process of the launch but ``root`` until none is left; how many were
    killed. A killed process forks no more, and the children it had show up as the launch's at
    the next round (as ``root``'s or carrying the mark). Bounded by ``_SWEEP_WAIT_S`` in all: a
    process slow to die (a GPU context torn down in the kernel) is waited for once, not again
    at every round, and a tree that forks faster than it dies does not hold a stop forever."""
    acted: set[int] = set()
    killed = 0
    deadline = time.monotonic() + _SWEEP_WAIT_S
    while time.monotonic() < deadline:
        found = leftovers(root, mark)
        fresh = [pid for pid in found if pid not in acted]
        if not fresh:
            break
        known = acted | set(found)
        for pid in fresh:
            acted.add(pid)
            killed += _signal(pid, signal.SIGKILL, root, mark, known)
        while time.monotonic() < deadline and any(_running(pid) for pid in fresh):
            time.sleep(0.01)
    return killed


def _running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"
