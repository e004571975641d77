"""RayLauncher: replicas on other GPU hosts through Ray Core, placed by llama-orch.

Ray provides node membership, per-node resources, node affinity, detached actors and failure
detection; it never chooses GPUs. Every host joins the cluster with a resource naming it
(``llorch_host_<name>``) and one per GPU (``llorch_gpu_<i>``). A replica's actor is pinned to
its host with ``NodeAffinitySchedulingStrategy(node, soft=False)`` and books exactly the GPUs of
the device mask llama-orch chose, one unit each, so a mask already in use stays pending instead
of landing elsewhere.

One detached, named actor per replica owns the engine process on its node:

- it starts the engine in a new session on a free port of its node, with ``CUDA_VISIBLE_DEVICES``
  set to the mask; secrets travel in the environment, never on the command line;
- the engine dies with the actor (``PR_SET_PDEATHSIG``), and ``stop`` sends SIGTERM, waits, then
  SIGKILLs the process group (``ray.kill`` alone would leave the engine running);
- ``max_restarts=0``: the replica supervisor owns restarts and re-runs placement.

How a replica ended is its ``exit_kind``: ``exited`` (the engine), ``actor_died`` (its actor,
on a node that is still alive), ``node_lost`` (its host left the cluster) or ``head_lost`` (the
cluster's head became unreachable). ``ray`` is imported by this module only.

Losing the head costs the cluster replicas, never the server: every Ray call runs in a thread of
its own pool with a deadline, the head's loss is noticed by the inventory poll, and then the
server lets go of Ray (``ray.shutdown``), refuses cluster launches, and connects again
(``ray.init``) once the head answers. Without GCS fault tolerance a restarted head is a new
cluster: its hosts join it again and the supervisor places the replicas afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray._private import auto_init_hook
from ray.exceptions import (
    ActorUnschedulableError,
    AuthenticationError,
    GetTimeoutError,
    RayActorError,
    RayError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from llama_orch import __version__
from llama_orch.config import parse_host_port
from llama_orch.observability.narration import narrate
from llama_orch.pool.gpus import Gpu, GpuInventory
from llama_orch.pool.launch._tree import MARK_VAR, as_subreaper, sweep, terminate, unrunnable
from llama_orch.pool.launch._types import (
    ExitKind,
    LaunchError,
    LaunchSpec,
    NoLiveHost,
    read_log_tail,
    redact_argv,
)
from llama_orch.pool.launch.local import LOG_ROTATE_BYTES, rotate_running_log

#: The least time between two requests to an engine's actor to look at its log.
TEND_EVERY_S = 1.0
#: Ray namespace of every llama-orch actor (detached actors are found again by name in it).
NAMESPACE = "llama-orch"
#: Actor name prefixes: engines (one per replica) and inventory agents (one per host).
ENGINE_PREFIX = "llorch-engine-"
AGENT_PREFIX = "llorch-agent-"
#: How long a new inventory agent may take to answer first before its host counts as stale.
AGENT_START_S = 30.0
_PR_SET_PDEATHSIG = 1

#: Ray ends a driver whose head has been unreachable this long (whole seconds; Ray's default is
#: 60). Read from the environment when the connection starts.
RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
#: How long a Ray call may take before the server stops waiting for it.
_ASK_S = 5.0
#: ``ray.shutdown`` with the head away waits for it about 5 s; ``ray.init`` waits for as long as
#: the head is away.
_SHUTDOWN_S = 30.0
_CONNECT_S = 60.0
#: How often a lost head is knocked on.
_PROBE_S = 1.0
#: Ray calls block (on the head, on a node), some for as long as the head is away: they run in
#: these threads, never on the event loop, and one that hangs takes no thread the rest of the
#: server needs.
_RAY_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="llorch-ray")
_T = TypeVar("_T")


async def _off_loop(call: Callable[[], _T], timeout_s: float = _ASK_S) -> _T:
    """``call()`` in a Ray thread; TimeoutError after ``timeout_s`` (the thread may go on)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        return await loop.run_in_executor(_RAY_THREADS, call)


async def _answer(ref: Any, timeout_s: float = _ASK_S) -> Any:
    """An actor call's answer; TimeoutError when its host or the head is away that long."""
    async with asyncio.timeout(timeout_s):
        return await asyncio.wrap_future(ref.future())


#: Custom resources a host joins with: its name, and one per GPU index.
HOST_PREFIX = "llorch_host_"
GPU_PREFIX = "llorch_gpu_"


def gpu_resource(index: int) -> str:
    return f"{GPU_PREFIX}{index}"


@contextlib.contextmanager
def _signals_kept() -> Iterator[None]:
    """Keep this process's SIGTERM and SIGINT handling across ``ray.init``.

    On the main thread ``ray.init`` makes SIGTERM call ``sys.exit`` (and Ray's native logging
    traps it too), so a server told to stop would die without stopping its engines or ending
    its streams. The handlers in place before (the event loop's) are put back.
    """
    main = threading.current_thread() is threading.main_thread()
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)


def host_resource(host: str) -> str:
    return f"{HOST_PREFIX}{host}"


def node_resources(host: str, gpus: int) -> dict[str, float]:
    """The custom resources a host joins with: its name and one unit per GPU."""
    return {host_resource(host): 1.0, **{gpu_resource(i): 1.0 for i in range(gpus)}}


#: The node label every ``llorch node head`` / ``join`` starts with: its llama-orch release.
VERSION_LABEL = "llorch-version"


def release_label(release: str = __version__) -> str:
    """The release as a node label value (Ray takes letters, digits, ``-``, ``_`` and ``.``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", release)[:63]


def versions() -> dict[str, str]:
    """Ray, Python and llama-orch versions of this process (every node of a cluster must match
    them: the hosts run the engine actor's code from their own llama-orch)."""
    return {
        "ray": ray.__version__,
        "python": ".".join(map(str, sys.version_info[:3])),
        "llama-orch": __version__,
    }


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A host of the cluster as llama-orch places on it."""

    name: str
    gpus: tuple[int, ...]
    #: Simulated per-GPU VRAM in bytes the agent reports where NVML is absent (tests).
    simulated_vram: int | None = None


# -- the actors (run on the nodes) ------------------------------------------------------------


def _die_with_parent() -> None:
    # A lost node or a killed actor takes its engine with it: no process outlives its owner.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class EngineActor:
    """Owns one replica's engine process on its node (an async actor: run and stop overlap)."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._log_path = ""
        self._info: dict[str, Any] = {}
        #: The launch's mark: its helpers outside the engine's process group go with it.
        self._mark = uuid.uuid4().hex

    async def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        devices: Sequence[int],
        log_path: str,
        shown: Sequence[str],
        identity: str = "",
    ) -> dict[str, Any]:
        host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        port = _free_port(host)
        full_env = {
            **os.environ,
            **env,
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, devices)),
            "LLORCH_ENGINE_HOST": host,
            "LLORCH_ENGINE_PORT": str(port),
            MARK_VAR: self._mark,
        }
        argv = [a.replace("{host}", host).replace("{port}", str(port)) for a in argv]
        if argv and unrunnable(argv[0], full_env.get("PATH"), None) is None:
            # A child subreaper, as on the local launcher (a program that cannot run is left
            # to fail the exec below, as before, naming itself).
            argv = list(as_subreaper(tuple(argv)))
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self._log_path = log_path
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        shown_line = " ".join(shown).replace("{host}", host).replace("{port}", str(port))
        log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(log, f"--- {stamp} launch on {host}: {shown_line}\n".encode())
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            os.close(log)
        self._info = {
            "host": host,
            "port": port,
            "pid": self._proc.pid,
            "log_path": log_path,
            "identity": identity,
        }
        return self._info

    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else -1

    async def tend(self, log_max_bytes: int) -> None:
        """Rotate the running engine's log past ``log_max_bytes``, as the local launcher does."""
        try:
            size = os.stat(self._log_path).st_size
        except OSError:
            return
        if size > log_max_bytes:
            await asyncio.to_thread(rotate_running_log, Path(self._log_path))

    def describe(self) -> dict[str, Any]:
        """What a server that restarted needs to take this engine over (``alive`` False: it
        exited, or never started)."""
        alive = self._proc is not None and self._proc.returncode is None
        node = ray.get_runtime_context().get_node_id()
        return {**self._info, "alive": alive, "node_id": node}

    async def run(self) -> int:
        assert self._proc is not None
        code = await self._proc.wait()
        await self._forget()
        return code

    async def _forget(self) -> None:
        assert self._proc is not None
        # Helpers the engine forked may outlive it; the group goes with the replica, and so do
        # the helpers that left it (by the mark: the engine's pid is reaped).
        _signal_group(self._proc.pid, signal.SIGKILL)
        await asyncio.to_thread(sweep, None, self._mark)

    async def _kill_all(self) -> None:
        assert self._proc is not None
        if self._proc.returncode is None:
            await asyncio.to_thread(sweep, self._proc.pid, self._mark)
        _signal_group(self._proc.pid, signal.SIGKILL)

    async def stop(self, timeout_s: float) -> int:
        proc = self._proc
        assert proc is not None
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            _signal_group(proc.pid, signal.SIGCONT)
            await asyncio.to_thread(terminate, proc.pid, self._mark)
            try:
                async with asyncio.timeout(timeout_s):
                    await proc.wait()
            except TimeoutError:
                await self._kill_all()
        code = await proc.wait()
        await self._forget()
        return code

    async def kill(self) -> int:
        assert self._proc is not None
        await self._kill_all()
        code = await self._proc.wait()
        await self._forget()
        return code

    def log_tail(self, lines: int) -> str:
        return read_log_tail(self._log_path, lines)


class HostAgent:
    """One per host: reports the host's GPU inventory (NVML, or simulated where it is absent)."""

    def __init__(self, host: str, gpus: Sequence[int], simulated_vram: int | None) -> None:
        self._host = host
        self._gpus = list(gpus)
        self._simulated_vram = simulated_vram

    def inventory(self) -> dict[str, Any]:
        node = ray.get_runtime_context().get_node_id()
        found: dict[str, Any] = {"host": self._host, "node_id": node, "pid": os.getpid()}
        if self._simulated_vram is not None:
            devices = [
                {
                    "index": i,
                    "name": f"simulated-{i}",
                    "vram_total": self._simulated_vram,
                    "vram_free": self._simulated_vram,
                    "utilization": 0.0,
                }
                for i in self._gpus
            ]
            return {**found, "simulated": True, "devices": devices}
        return {**found, "simulated": False, "devices": _nvml()}


def _nvml() -> list[dict[str, Any]]:
    import pynvml

    pynvml.nvmlInit()
    try:
        out: list[dict[str, Any]] = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            out.append(
                {
                    "index": i,
                    "name": name if isinstance(name, str) else name.decode(),
                    "vram_total": int(mem.total),
                    "vram_free": int(mem.free),
                    "utilization": float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                }
            )
        return out
    finally:
        pynvml.nvmlShutdown()


def gpu_inventory(found: Mapping[str, Any]) -> GpuInventory:
    """An agent's answer as the pool manager's inventory type."""
    simulated = bool(found["simulated"])
    gpus = tuple(
        Gpu(
            int(d["index"]),
            str(d.get("name", f"gpu-{d['index']}")),
            int(d["vram_total"]),
            int(d["vram_total"]) - int(d["vram_free"]),
            float(d.get("utilization", 0.0)),
            simulated=simulated,
        )
        for d in found["devices"]
    )
    return GpuInventory(gpus, simulated=simulated)


# A Ray call made while the server is disconnected (its head lost) must fail, never start a
# cluster of its own (RAY_ENABLE_AUTO_CONNECT=0 is read only when ray is imported).
auto_init_hook.enable_auto_connect = False

_RemoteEngine = ray.remote(EngineActor)
_RemoteAgent = ray.remote(HostAgent)


# -- the driver side (runs in the server) -----------------------------------------------------


@dataclass(slots=True)
class RayEngine:
    """The handle of one replica whose engine runs in a Ray actor."""

    _spec: LaunchSpec
    actor: Any
    node_id: str
    node_host: str
    _pid: int
    _endpoint: str
    _log_path: str
    _alive: Callable[[str], bool]
    #: Node ids this launcher saw lost: never placed on again, whatever Ray still says.
    _lost_nodes: set[str]
    _run_ref: Any = None
    _returncode: int | None = None
    exit_kind: ExitKind | None = None
    #: Taken over from a previous server (its engine was already running).
    adopted: bool = False
    _last_tail: str = ""
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set once the cluster's head is lost: the actor is out of reach for good.
    _head_gone: asyncio.Event = field(default_factory=asyncio.Event)
    #: The engine's log past this size is rotated on its host (engines.log_max_bytes).
    _log_max_bytes: int = LOG_ROTATE_BYTES
    #: When the actor was last asked to look at the log (a remote call: not at every probe).
    _tended: float = 0.0

    @property
    def spec(self) -> LaunchSpec:
        return self._spec

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def host(self) -> str:
        return self.node_host

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def log_path(self) -> None:
        # The log lives on the engine's node; ``log_tail`` reads it through the actor.
        return None

    async def wait(self) -> int:
        if self._returncode is not None:
            return self._returncode
        if self._run_ref is None and not self._head_gone.is_set():
            self._run_ref = self.actor.run.remote()
        if self._run_ref is not None:
            run = asyncio.wrap_future(self._run_ref.future())
            gone = asyncio.ensure_future(self._head_gone.wait())
            try:
                await asyncio.wait({run, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if run.done():
                await self._ran(run)
            else:
                run.cancel()
        self._finish(-signal.SIGKILL, ExitKind.HEAD_LOST)
        # A detached actor outlives its engine until killed, and holds the mask's GPUs.
        await self._release()
        return self._returncode if self._returncode is not None else -signal.SIGKILL

    async def _ran(self, run: asyncio.Future[Any]) -> None:
        try:
            code = int(run.result())
        except RayActorError as exc:
            self._finish(-signal.SIGKILL, await self._classify(exc))
            return
        with contextlib.suppress(RayError, TimeoutError):
            self._last_tail = str(await _answer(self.actor.log_tail.remote(20)))
        self._finish(code, ExitKind.EXITED)

    async def _classify(self, exc: RayActorError) -> ExitKind:
        text = str(exc).lower()
        if "node" in text and ("died" in text or "dead" in text):
            return ExitKind.NODE_LOST
        try:
            alive = await _off_loop(functools.partial(self._alive, self.node_id))
        except (RayError, TimeoutError):
            alive = False
        if alive:
            return ExitKind.ACTOR_DIED
        return ExitKind.HEAD_LOST if self._head_gone.is_set() else ExitKind.NODE_LOST

    def _finish(self, code: int, kind: ExitKind) -> None:
        if self._returncode is None:
            self._returncode, self.exit_kind = code, kind
            if kind is ExitKind.NODE_LOST:
                self._lost_nodes.add(self.node_id)
            if kind is not ExitKind.EXITED:
                narrate(
                    "pool-manager",
                    kind.value.replace("_", "-"),
                    self._spec.pool_id,
                    f"Replica {self._spec.pool_id}/{self._spec.replica_id} on host {self.host} "
                    f"is gone: {kind.value}.",
                    level="warning",
                    pool_id=self._spec.pool_id,
                    replica_id=self._spec.replica_id,
                    host=self.host,
                    exit_kind=kind.value,
                )

    async def _end(self, call: Callable[[], Any], timeout_s: float) -> None:
        """Ask the actor to end its engine (``call`` sends the request); without an answer the
        engine counts as lost with its host, or with the head."""
        if self._returncode is None and not self._head_gone.is_set():
            with contextlib.suppress(RayError, TimeoutError):
                self._last_tail = str(await _answer(self.actor.log_tail.remote(20)))
            try:
                self._finish(int(await _answer(call(), timeout_s)), ExitKind.EXITED)
            except RayActorError as exc:
                self._finish(-signal.SIGKILL, await self._classify(exc))
            except (RayError, TimeoutError):
                pass
        gone = self._head_gone.is_set()
        self._finish(-signal.SIGKILL, ExitKind.HEAD_LOST if gone else ExitKind.NODE_LOST)
        await self._release()

    async def stop(self, timeout_s: float = 10.0) -> int:
        await self._end(lambda: self.actor.stop.remote(timeout_s), timeout_s + _ASK_S)
        return self._returncode if self._returncode is not None else -signal.SIGKILL

    async def kill(self) -> None:
        await self._end(lambda: self.actor.kill.remote(), _ASK_S)

    async def tend(self) -> None:
        """The engine's log is on its host: its actor rotates it there, asked at most once per
        ``TEND_EVERY_S``, never past its host's or the head's absence."""
        now = time.monotonic()
        if (
            self._returncode is not None
            or self._head_gone.is_set()
            or now - self._tended < TEND_EVERY_S
        ):
            return
        self._tended = now
        with contextlib.suppress(RayError, TimeoutError):
            await _answer(self.actor.tend.remote(self._log_max_bytes))

    async def _release(self) -> None:
        if self._head_gone.is_set():
            return  # the server let go of Ray: the actor went with its head's cluster
        with contextlib.suppress(Exception):
            await _off_loop(functools.partial(ray.kill, self.actor, no_restart=True))

    def log_tail(self, lines: int = 20) -> str:
        # Read from the actor whenever the engine ends (never here: this runs on the loop).
        return "\n".join(self._last_tail.splitlines()[-lines:])

    async def read_log_tail(self, lines: int = 20) -> str:
        if self._returncode is None and not self._head_gone.is_set():
            with contextlib.suppress(RayError, TimeoutError):
                self._last_tail = str(await _answer(self.actor.log_tail.remote(lines)))
        return self.log_tail(lines)


@dataclass(frozen=True, slots=True)
class _Silence:
    """Why an inventory poll got no answer from the head."""

    why: str
    #: Another cluster answered at the head's address: lost at once, with no grace.
    restarted: bool = False


@dataclass(frozen=True, slots=True)
class _LiveHost:
    node_id: str
    #: The GPUs the host joined with (its ``llorch_gpu_<i>`` resources).
    gpus: frozenset[int]
    #: Its llama-orch release label; None for a node started without ``llorch node``.
    release: str | None

    def fits(self, devices: Sequence[int]) -> bool:
        return set(devices) <= self.gpus and self.release in (None, release_label())


def _check_host(name: str, host: _LiveHost, devices: Sequence[int]) -> None:
    """Refuse a host the replica cannot run on whatever the wait: the join or the config is
    wrong (Ray would call the actor infeasible, or run another release's actor code)."""
    if host.release not in (None, release_label()):
        raise LaunchError(
            f"host {name} runs llama-orch {host.release}, this server {release_label()}: "
            "install the same release there and join it again (`llorch node join`)"
        )
    missing = sorted(set(devices) - host.gpus)
    if missing:
        raise LaunchError(
            f"host {name} joined with GPUs {sorted(host.gpus)}, not GPU {missing} of this "
            f"replica's mask {list(devices)}: join it again with `llorch node join --gpus N` "
            "(N above the highest index), or give the pool devices the host has"
        )


class RayLauncher:
    """Launches each replica in a detached actor on the host its pool names.

    ``hosts`` lists the hosts in the order re-placement tries them: a replica whose host is
    gone goes to the first other live host that has every GPU of its mask.
    """

    def __init__(
        self,
        hosts: Sequence[HostSpec],
        *,
        address: str | None = None,
        log_dir: str = "/tmp/llama-orch/logs",
        log_max_bytes: int = LOG_ROTATE_BYTES,
        placement_timeout_s: float = 30.0,
        token_file: str | None = None,
        expected: Iterable[str] = (),
        head_exit_timeout_s: float = 86_400.0,
        head_lost_after_s: float = 10.0,
    ) -> None:
        self.hosts = list(hosts)
        #: Keys (``pool-replica``) of the configured replicas: their engines may be adopted.
        self.expected = frozenset(expected)
        #: Engine actors a previous server left running, waiting for their replica's launch.
        self._survivors: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.token_file = token_file
        self.address = address
        self.log_dir = log_dir
        self.log_max_bytes = log_max_bytes
        self.placement_timeout_s = placement_timeout_s
        self._agents: dict[str, Any] = {}
        #: When each agent that has not answered yet was asked for (its process may be starting).
        self._agent_born: dict[str, float] = {}
        self._lost_nodes: set[str] = set()
        self.head_exit_timeout_s = head_exit_timeout_s
        self.head_lost_after_s = head_lost_after_s
        #: Since when a head that still accepts connections has missed every poll (None: it
        #: answered the last one).
        self._unanswered_since: float | None = None
        #: The head's GCS address once connected (knocked on while the head is lost).
        self._gcs_address: str | None = None
        #: While set, the head is lost: no Ray call is made, cluster launches wait.
        self._head_gone = asyncio.Event()
        self._head_watch: asyncio.Task[None] | None = None
        self._connecting = threading.Lock()

    @property
    def head_lost(self) -> bool:
        return self._head_gone.is_set()

    def connect(self) -> None:
        with self._connecting:
            if ray.is_initialized():
                return
            if self.token_file is not None:
                # Ray reads its token authentication settings from the environment.
                os.environ.update(auth_env(self.token_file))
            # Read when the connection starts: without it Ray ends this whole process (its
            # local pools too) once the head has been away 60 s.
            os.environ[RECONNECT_ENV] = str(max(1, math.ceil(self.head_exit_timeout_s)))
            with _signals_kept():
                ray.init(
                    address=self.address,
                    namespace=NAMESPACE,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            self._gcs_address = str(ray.get_runtime_context().gcs_address)

    # -- losing the head and finding it again ---------------------------------------------------

    def _lose_head(self, why: str) -> None:
        """Let go of every cluster replica and of Ray; knock on the head until it answers."""
        if self._head_gone.is_set():
            return
        self._head_gone.set()
        self._unanswered_since = None
        narrate(
            "pool-manager",
            "head-lost",
            "cluster",
            f"The Ray head at {self._gcs_address or self.address} is unreachable ({why}): the "
            "cluster hosts are stale and their replicas down until it answers again; local "
            "pools serve on.",
            level="warning",
        )
        self._head_watch = asyncio.get_running_loop().create_task(self._find_head())

    async def _find_head(self) -> None:
        # Disconnected, no call can wait on the old head, and a new one cannot be confused
        # with it (Ray aborts a process whose pending call meets a restarted head).
        with contextlib.suppress(Exception):
            await _off_loop(ray.shutdown, _SHUTDOWN_S)
        while True:
            await asyncio.sleep(_PROBE_S)
            if await self._head_listens() and await self._reconnected():
                break
        self._agents.clear()
        self._agent_born.clear()
        self._lost_nodes.clear()
        self._head_gone = asyncio.Event()
        narrate(
            "pool-manager",
            "head-back",
            "cluster",
            f"The Ray head at {self._gcs_address or self.address} answers again: cluster "
            "replicas are placed again as their hosts join it.",
        )
        with contextlib.suppress(RayError, TimeoutError, ConnectionError):
            await self.reap_orphans()

    async def _head_listens(self) -> bool:
        """Whether something accepts connections at the head's address (True where the address
        is not known: ``auto`` before the first connection)."""
        try:
            host, port = parse_host_port(self._gcs_address or self.address or "")
        except ValueError:
            return True
        try:
            async with asyncio.timeout(_ASK_S):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    @staticmethod
    async def _connected(connect: Callable[[], None]) -> None:
        """Run ``connect`` in a Ray thread. ``ray.init`` installs Ray's native SIGTERM handler,
        which would end the server at once; the loop's handlers are put back from its thread."""
        with _signals_kept():
            await _off_loop(connect, _CONNECT_S)

    async def _reconnected(self) -> bool:
        def again() -> None:
            ray.shutdown()
            self.connect()

        try:
            await self._connected(again)
        # A head still starting refuses in many ways (ConnectionError, RuntimeError, RpcError):
        # all mean "not yet".
        except Exception:
            return False
        return True

    # -- placement --------------------------------------------------------------------------

    def live_nodes(self, timeout_s: float = _ASK_S) -> dict[str, str]:
        """host name -> Ray node id of every live node that joined as a llama-orch host."""
        return {host: live.node_id for host, live in self._live_hosts(timeout_s).items()}

    def _live_hosts(self, timeout_s: float = _ASK_S) -> dict[str, _LiveHost]:
        """host name -> what placement needs of every live llama-orch host."""
        out: dict[str, _LiveHost] = {}
        for node in _nodes(timeout_s):
            if not node.get("Alive") or node["NodeID"] in self._lost_nodes:
                continue
            resources = node.get("Resources", {})
            gpus = frozenset(
                int(index)
                for res in resources
                if (index := res.removeprefix(GPU_PREFIX)) != res and index.isdigit()
            )
            release = node.get("Labels", {}).get(VERSION_LABEL)
            for res in resources:
                if res.startswith(HOST_PREFIX):
                    out[res.removeprefix(HOST_PREFIX)] = _LiveHost(node["NodeID"], gpus, release)
        return out

    def _alive(self, node_id: str) -> bool:
        return any(n["NodeID"] == node_id and n.get("Alive") for n in _nodes())

    def choose_host(self, preferred: str | None, devices: tuple[int, ...]) -> tuple[str, str]:
        """The preferred host while it is live, else the first live host with the mask's GPUs."""
        live = self._live_hosts()
        if preferred is not None and preferred in live:
            found = live[preferred]
            _check_host(preferred, found, devices)
            return preferred, found.node_id
        for host in self.hosts:
            other = live.get(host.name)
            if other is not None and other.fits(devices) and set(devices) <= set(host.gpus):
                return host.name, other.node_id
        names = ", ".join(sorted(live)) or "none"
        raise NoLiveHost(
            f"no live host has GPUs {list(devices)} for this replica (wanted "
            f"{preferred or 'any'}; live hosts: {names}); join a host with `llorch node join`"
        )

    # -- the Launcher protocol -----------------------------------------------------------------

    async def launch(self, spec: LaunchSpec) -> RayEngine:
        leaked = [s for s in spec.secrets if s and any(s in a for a in spec.argv)]
        if leaked:
            raise LaunchError(
                f"{spec.pool_id}/{spec.replica_id}: a secret is on the engine's command line; "
                "pass it through the environment (it would show in every process list)"
            )
        if self.head_lost:
            raise NoLiveHost(
                f"the Ray head at {self._gcs_address or self.address} is unreachable: the "
                "replica is placed once it answers again and its host has joined it"
            )
        try:
            await self._connected(self.connect)
            adopted = await self._adopt(spec)
            if adopted is not None:
                return adopted
            host, node_id, actor = await self._place(spec)
        except (RayError, ConnectionError, TimeoutError) as exc:
            raise NoLiveHost(
                f"the Ray head at {self._gcs_address or self.address} did not answer: {exc!r}"
            ) from exc
        argv = _templated(spec)
        shown = redact_argv(argv, spec.secrets)
        log_path = os.path.join(self.log_dir, f"{spec.key}.log")
        ref = actor.start.remote(argv, spec.env, spec.devices, log_path, shown, identity_of(spec))
        try:
            pending = asyncio.wrap_future(ref.future())
            async with asyncio.timeout(self.placement_timeout_s):
                info = await pending
        except TimeoutError:
            await self._kill_actor(actor)
            raise LaunchError(
                f"{spec.pool_id}/{spec.replica_id} stayed pending {self.placement_timeout_s:.0f} s "
                f"on host {host}: GPUs {list(spec.devices)} are booked by another replica or "
                "the host lacks them (see `ray status`)"
            ) from None
        except RayActorError as exc:
            raise LaunchError(f"{spec.pool_id}/{spec.replica_id} on host {host}: {exc}") from exc
        except ActorUnschedulableError as exc:
            # The host left between choosing it and placing the actor: wait for the cluster.
            await self._kill_actor(actor)
            try:
                gone = not await _off_loop(functools.partial(self._alive, node_id))
            except (RayError, TimeoutError):
                gone = True
            raise (NoLiveHost if gone else LaunchError)(
                f"{spec.pool_id}/{spec.replica_id} cannot be placed on host {host}"
                + (": the host left the cluster" if gone else f": {exc}")
            ) from exc
        except OSError as exc:
            await self._kill_actor(actor)
            raise LaunchError(f"cannot start {spec.argv[0]} on host {host}: {exc}") from exc
        engine = self._engine(spec, actor, host, node_id, info)
        narrate(
            "pool-manager",
            "spawn",
            spec.pool_id,
            f"Starts replica {spec.pool_id}/{spec.replica_id} on host {host} as pid "
            f"{info['pid']} on {engine.endpoint}.",
            pool_id=spec.pool_id,
            replica_id=spec.replica_id,
            host=host,
            pid=info["pid"],
            endpoint=engine.endpoint,
            device_mask=list(spec.devices),
            argv=shown,
        )
        return engine

    async def _place(self, spec: LaunchSpec) -> tuple[str, str, Any]:
        """The host, its node and the replica's new actor (pending until its GPUs are free)."""
        host, node_id = await _off_loop(
            functools.partial(self.choose_host, spec.node, spec.devices), 2 * _ASK_S
        )
        name = ENGINE_PREFIX + spec.key
        await _off_loop(functools.partial(_kill_leftover, name))

        def create() -> Any:
            return _RemoteEngine.options(
                name=name,
                namespace=NAMESPACE,
                lifetime="detached",
                max_restarts=0,
                # Calls of a server that died may still wait in it (its run) after an adoption.
                max_concurrency=16,
                num_cpus=0,
                resources={gpu_resource(i): 1.0 for i in spec.devices},
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote()

        # A named actor is registered with the head before its handle returns.
        return host, node_id, await _off_loop(create)

    @staticmethod
    async def _kill_actor(actor: Any) -> None:
        with contextlib.suppress(Exception):
            await _off_loop(functools.partial(ray.kill, actor, no_restart=True))

    def _engine(
        self, spec: LaunchSpec, actor: Any, host: str, node_id: str, info: Mapping[str, Any]
    ) -> RayEngine:
        endpoint = f"http://{info['host']}:{info['port']}"
        pid, log_path = int(info["pid"]), str(info["log_path"])
        engine = RayEngine(
            spec,
            actor,
            node_id,
            host,
            pid,
            endpoint,
            log_path,
            self._alive,
            self._lost_nodes,
            _log_max_bytes=self.log_max_bytes,
        )
        engine._head_gone = self._head_gone
        return engine

    def engine_actors(self) -> list[str]:
        """Names of the live engine actors of the cluster (this server's and any leftover)."""
        found = ray.util.list_named_actors(all_namespaces=True)
        return sorted(
            a["name"]
            for a in found
            if a["namespace"] == NAMESPACE and a["name"].startswith(ENGINE_PREFIX)
        )

    async def reap_orphans(self) -> list[int]:
        """Engine actors a previous server left: one of a configured replica whose engine still
        runs is kept for that replica's first launch to adopt; the others are stopped. A head
        that does not answer is lost: the server starts without its cluster replicas."""
        if not ray.is_initialized() and not await self._head_listens():
            # ray.init would wait minutes for a head that is not there.
            self._lose_head("nothing accepts connections there")
            return []
        try:
            await self._connected(self.connect)
            names = await _off_loop(self.engine_actors)
        except (RayError, ConnectionError, TimeoutError) as exc:
            self._lose_head(f"it did not answer: {exc!r}")
            return []
        stopped: list[int] = []
        for name in names:
            key = name.removeprefix(ENGINE_PREFIX)
            try:
                actor = await _off_loop(functools.partial(ray.get_actor, name, NAMESPACE))
            except (ValueError, RayError, TimeoutError):
                continue  # gone meanwhile
            found = await _describe(actor)
            if key in self.expected and found is not None and found["alive"]:
                self._survivors[key] = (actor, found)
                continue
            pid = await _stop_actor(actor)
            stopped += [pid] if pid is not None else []
            narrate(
                "pool-manager",
                "reap",
                key,
                f"Stops engine actor {name} left by a previous run"
                + ("." if key in self.expected else ": no configured replica has its name."),
                level="warning",
            )
        return stopped

    async def close(self) -> None:
        """Stop the engines a previous server left that no replica took over (a replica whose
        first launch never came, its model gone, say): a stopped server leaves none."""
        if self._head_watch is not None:
            self._head_watch.cancel()
        survivors, self._survivors = self._survivors, {}
        if self.head_lost:
            return
        for key, (actor, _) in survivors.items():
            await _stop_actor(actor)
            narrate(
                "pool-manager",
                "reap",
                key,
                f"Stops engine actor {ENGINE_PREFIX + key} left by a previous run: its replica "
                "never launched.",
                level="warning",
            )

    async def _adopt(self, spec: LaunchSpec) -> RayEngine | None:
        """The engine a previous server left for this replica, if it is still its own: same
        identity (command, environment, mask, host), alive, on a live host. Else it is
        stopped, and None: the caller launches afresh."""
        survivor = self._survivors.pop(spec.key, None)
        if survivor is None:
            return None
        actor, found = survivor
        live = await _off_loop(self._live_hosts)
        hosts = {h.node_id: name for name, h in live.items()}
        releases = {h.node_id: h.release for h in live.values()}
        current = await _describe(actor)
        why = None
        if found.get("identity") != identity_of(spec):
            why = "its command, environment or mask differ from the configured replica's"
        elif found["node_id"] not in hosts:
            why = "its host is not live"
        elif releases[found["node_id"]] not in (None, release_label()):
            why = (
                f"its host runs llama-orch {releases[found['node_id']]}, this server "
                f"{release_label()}"
            )
        elif current is None or not current["alive"]:
            why = "its engine is gone"
        if why is not None:
            await _stop_actor(actor)
            narrate(
                "pool-manager",
                "reap",
                spec.key,
                f"Stops engine actor {ENGINE_PREFIX + spec.key} left by a previous run: {why}.",
                level="warning",
                pool_id=spec.pool_id,
                replica_id=spec.replica_id,
            )
            return None
        host = hosts[found["node_id"]]
        engine = self._engine(spec, actor, host, found["node_id"], found)
        engine.adopted = True
        narrate(
            "pool-manager",
            "adopt",
            spec.pool_id,
            f"Takes over replica {spec.pool_id}/{spec.replica_id} on host {host}: pid "
            f"{found['pid']} on {engine.endpoint}, left running by a previous run.",
            pool_id=spec.pool_id,
            replica_id=spec.replica_id,
            host=host,
            pid=found["pid"],
            endpoint=engine.endpoint,
            device_mask=list(spec.devices),
        )
        return engine

    # -- inventory --------------------------------------------------------------------------

    async def inventories(self, deadline_s: float = 2.0) -> dict[str, dict[str, Any] | None]:
        """host -> its agent's inventory, or None when it missed the deadline (stale). A host
        whose new agent has not answered yet (for up to ``AGENT_START_S``) is left out.

        Asking Ray (the node table, the agents) blocks, so the poll runs in a Ray thread. A head
        that does not answer is lost: every host is stale until it answers again.
        """
        if self.head_lost:
            return {h.name: None for h in self.hosts}
        try:
            found, unreachable = await _off_loop(
                functools.partial(self._poll, deadline_s), deadline_s + 2 * _ASK_S
            )
        except TimeoutError:
            found = {h.name: None for h in self.hosts}
            unreachable = _Silence("it did not answer in time")
        if unreachable is None:
            self._head_answered()
        else:
            await self._head_unanswered(unreachable)
        return found

    async def _head_unanswered(self, silence: _Silence) -> None:
        """A head that misses a poll may only be stalled (a pause, a busy machine): its hosts
        are stale meanwhile, their replicas keep their engines and streams. It is lost once
        nothing accepts connections at its address (its GCS is gone: a stopped or busy process
        still accepts them), once another cluster answers there (a restarted head), or once it
        has not answered for ``head_lost_after_s``."""
        why, now = silence.why, time.monotonic()
        if silence.restarted:
            self._lose_head(why)
            return
        if self._unanswered_since is None:
            self._unanswered_since = now
            narrate(
                "pool-manager",
                "head-slow",
                "cluster",
                f"The Ray head at {self._gcs_address or self.address} did not answer ({why}): "
                "the cluster hosts are stale until it does; it counts as lost after "
                f"{self.head_lost_after_s:g} s without an answer.",
                level="warning",
            )
        if not await self._head_listens():
            # Lost at once: a head restarted there later must never meet a pending call.
            self._lose_head("nothing accepts connections there")
        elif now - self._unanswered_since >= self.head_lost_after_s:
            self._lose_head(f"no answer for {now - self._unanswered_since:.1f} s: {why}")

    def _head_answered(self) -> None:
        if self._unanswered_since is None:
            return
        narrate(
            "pool-manager",
            "head-answers",
            "cluster",
            f"The Ray head at {self._gcs_address or self.address} answers again after "
            f"{time.monotonic() - self._unanswered_since:.1f} s: its cluster replicas serve on.",
        )
        self._unanswered_since = None

    async def host_inventories(self, deadline_s: float) -> dict[str, GpuInventory | None]:
        found = await self.inventories(deadline_s)
        return {h: None if f is None else gpu_inventory(f) for h, f in found.items()}

    def _poll(self, deadline_s: float) -> tuple[dict[str, dict[str, Any] | None], _Silence | None]:
        """The hosts' inventories, and why the head is unreachable (None: it answered)."""
        out: dict[str, dict[str, Any] | None] = {h.name: None for h in self.hosts}
        try:
            self.connect()
            live = self.live_nodes(deadline_s)
        except AuthenticationError as exc:
            # WrongClusterID: a head restarted at the address is a new cluster, and any other
            # call that meets it may abort the process; nothing of the old one is left to wait
            # for. (A changed cluster token is as final.)
            return out, _Silence(f"it answered as another cluster: {exc!r}", restarted=True)
        except (RayError, ConnectionError) as exc:
            # No host can be vouched for (the pool manager says which hosts turned stale).
            return out, _Silence(f"it did not answer: {exc!r}")
        try:
            refs = {
                host.name: self._agent(host, live[host.name]).inventory.remote()
                for host in self.hosts
                if host.name in live
            }
        except (RayError, ConnectionError):
            return out, None
        if refs:
            # One deadline for all hosts: asked at once, a slow host never delays the others.
            ray.wait(list(refs.values()), num_returns=len(refs), timeout=deadline_s)
        for name, ref in refs.items():
            # A host whose agent fails or misses the deadline is stale: None.
            try:
                out[name] = ray.get(ref, timeout=0)
                self._agent_born.pop(name, None)
            except GetTimeoutError:
                if time.monotonic() - self._agent_born.get(name, -AGENT_START_S) < AGENT_START_S:
                    # A new agent that never answered is still starting (a worker process
                    # spawns): no verdict on its host yet.
                    del out[name]
            except RayError:
                # Looked up again next time: a host that rejoined gets a new agent.
                self._agents.pop(name, None)
        return out, None

    def _agent(self, host: HostSpec, node_id: str) -> Any:
        agent = self._agents.get(host.name)
        if agent is None:
            agent = _RemoteAgent.options(
                name=AGENT_PREFIX + host.name,
                namespace=NAMESPACE,
                get_if_exists=True,
                lifetime="detached",
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(host.name, host.gpus, host.simulated_vram)
            self._agents[host.name] = agent
            self._agent_born[host.name] = time.monotonic()
        return agent


async def _describe(actor: Any) -> dict[str, Any] | None:
    """The actor's ``describe``; None when it does not answer in time."""
    try:
        found: dict[str, Any] = await _answer(actor.describe.remote())
    except (RayError, TimeoutError):
        return None
    return found


async def _stop_actor(actor: Any) -> int | None:
    """Stop the engine's process group, then the actor; the engine's pid if it answered."""
    pid = None
    with contextlib.suppress(RayError, TimeoutError):
        pid = int(await _answer(actor.pid.remote()))
        await _answer(actor.stop.remote(_ASK_S), 2 * _ASK_S)
    with contextlib.suppress(Exception):
        await _off_loop(functools.partial(ray.kill, actor, no_restart=True))
    return pid


def identity_of(spec: LaunchSpec) -> str:
    """What makes a running engine this replica's: pool, replica, host, mask, command (ports
    left as placeholders) and environment. A digest, so no secret is kept in the clear."""
    fields = {
        "pool": spec.pool_id,
        "replica": spec.replica_id,
        "node": spec.node,
        "devices": list(spec.devices),
        "argv": list(_templated(spec)),
        "env": sorted(spec.env.items()),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _kill_leftover(name: str) -> None:
    """Kill the engine actor ``name`` an earlier life of its replica left (a stop that never
    finished), if there is one."""
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)


def _nodes(timeout_s: float = _ASK_S) -> list[dict[str, Any]]:
    """The cluster's node table, as ``ray.nodes()`` gives it but read with a deadline:
    ``ray.nodes()`` waits for as long as the head is away, and aborts the whole process when a
    restarted head answers it (its cluster id differs)."""
    gcs = ray._private.worker.global_worker.gcs_client  # type: ignore[attr-defined]
    found = gcs.get_all_node_info(timeout=timeout_s)
    return [
        {
            "NodeID": node_id.hex(),
            "Alive": node.state == node.GcsNodeState.ALIVE,
            "Resources": dict(node.resources_total),
            "Labels": dict(node.labels),
        }
        for node_id, node in found.items()
    ]


def _templated(spec: LaunchSpec) -> tuple[str, ...]:
    """The command with its host and port as placeholders the actor fills on its node."""
    out: list[str] = []
    for arg in spec.argv:
        if arg == str(spec.port):
            out.append("{port}")
        elif arg == spec.host:
            out.append("{host}")
        else:
            out.append(arg)
    return tuple(out)


# -- joining a host to the cluster ------------------------------------------------------------

#: Fixed ports of every node (a LAN-only firewall rule allows exactly these; docs/cluster.md).
HEAD_PORT = 6379
NODE_PORTS = {
    "--node-manager-port": 6380,
    "--object-manager-port": 6381,
    "--runtime-env-agent-port": 6382,
    "--dashboard-agent-grpc-port": 6383,
    "--dashboard-agent-listen-port": 6384,
    "--metrics-export-port": 6385,
}
WORKER_PORTS = (10002, 10100)
#: Replicas exchange only small results through Ray: a small object store is enough.
OBJECT_STORE_BYTES = 128 * 2**20


class JoinRefused(Exception):
    """The host cannot join the head; the message says why and what to fix."""


def auth_env(token_file: str) -> dict[str, str]:
    """Ray token authentication with the shared token in ``token_file``."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_file}


@dataclass(frozen=True, slots=True)
class HeadState:
    """What a joining host checks against the head."""

    #: The Ray and Python versions the head was started with (its cluster metadata).
    versions: dict[str, str]
    #: Names of the llama-orch hosts that are in the cluster now.
    hosts: frozenset[str]


def head_refusal(address: str, exc: Exception, token_file: str | None) -> JoinRefused:
    """Why the head did not give its state, in words that say what to do."""
    if isinstance(exc, AuthenticationError):
        # Ray's own text advises generating a token, which can never match the head's.
        return JoinRefused(
            f"the head at {address} refused the cluster token in {token_file}: it is not the "
            "token the head started with; copy the head's token file here (`scp -p`, "
            "docs/cluster.md)"
        )
    return JoinRefused(f"the head at {address} did not answer: {exc}")


def head_state(address: str, token_file: str | None = None, timeout_s: float = 5.0) -> HeadState:
    """The head's versions and live hosts, read from its GCS as `ray start` reads them."""
    try:
        host, port = parse_host_port(address)  # [v6]:port as well
        socket.create_connection((host, port), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise JoinRefused(f"cannot reach the head at {address}: {exc}") from exc
    # No public API reads the cluster metadata; `ray start` reads it the same way.
    from ray._common.usage.usage_lib import get_cluster_metadata
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    try:
        gcs = GcsClient(address=address)
        meta = get_cluster_metadata(gcs)
        nodes = list(gcs.get_all_node_info(timeout=timeout_s).values())
    except Exception as exc:  # RpcError, or an auth failure: both refuse with the cause
        raise head_refusal(address, exc, token_file) from exc
    found = {"ray": str(meta["ray_version"]), "python": str(meta["python_version"])}
    for node in nodes:
        if node.is_head_node and VERSION_LABEL in node.labels:
            found["llama-orch"] = str(node.labels[VERSION_LABEL])
    hosts = frozenset(
        res.removeprefix(HOST_PREFIX)
        for node in nodes
        if node.state == node.GcsNodeState.ALIVE
        for res in node.resources_total
        if res.startswith(HOST_PREFIX)
    )
    return HeadState(found, hosts)


def check_name_free(name: str, head: HeadState) -> None:
    if name in head.hosts:
        raise JoinRefused(
            f"a host named {name} is already in the cluster; two hosts of one name would "
            "share its pools' placement: pass another --name (or stop that host's Ray first, "
            "`ray stop` there)"
        )


def check_versions(head: Mapping[str, str], here: Mapping[str, str]) -> None:
    """Refuse a host whose versions differ from the head's. A head that does not say its
    llama-orch release (started by hand, not with ``llorch node head``) is not compared on it."""
    differ = []
    if head["ray"] != here["ray"] or head["python"] != here["python"]:
        differ.append(
            f"the head runs Ray {head['ray']} on Python {head['python']}, "
            f"this host has Ray {here['ray']} on Python {here['python']}"
        )
    release = head.get("llama-orch")
    if release is not None and release != release_label(here["llama-orch"]):
        differ.append(
            f"the head runs llama-orch {release}, this host has llama-orch {here['llama-orch']}"
        )
    if differ:
        raise JoinRefused(
            f"version mismatch: {'; '.join(differ)}; install the same versions here (same "
            "llama-orch release, `uv sync --extra cluster`)"
        )


def start_argv(
    ray_bin: str,
    *,
    host: str | None,
    gpus: int,
    head: str | None = None,
    port: int = HEAD_PORT,
    object_store_bytes: int = OBJECT_STORE_BYTES,
) -> list[str]:
    """``ray start`` for a head (``head`` None) or a host joining ``head``: fixed ports, small
    object store, no dashboard, no usage stats, the host's name and GPUs as resources."""
    argv = [ray_bin, "start", "--disable-usage-stats", "--num-gpus=0"]
    argv += ["--head", f"--port={port}", "--include-dashboard=false"] if head is None else []
    argv += [f"--address={head}"] if head is not None else []
    argv += [f"{flag}={value}" for flag, value in NODE_PORTS.items()]
    argv += [f"--min-worker-port={WORKER_PORTS[0]}", f"--max-worker-port={WORKER_PORTS[1]}"]
    argv.append(f"--object-store-memory={object_store_bytes}")
    argv.append(f"--labels={VERSION_LABEL}={release_label()}")
    if host is not None:
        # Compact JSON: one shell word, no quoting needed.
        resources = json.dumps(node_resources(host, gpus), sort_keys=True, separators=(",", ":"))
        argv.append(f"--resources={resources}")
    return argv
