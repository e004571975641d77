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
on a node that is still alive) or ``node_lost`` (its host left the cluster). ``ray`` is imported
by this module only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
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
        if self._run_ref is None:
            self._run_ref = self.actor.run.remote()
        try:
            code = int(await self._run_ref)
            with contextlib.suppress(RayError):
                self._last_tail = await self.actor.log_tail.remote(20)
            self._finish(code, ExitKind.EXITED)
        except RayActorError as exc:
            self._finish(-signal.SIGKILL, await self._classify(exc))
        # A detached actor outlives its engine until killed, and holds the mask's GPUs.
        self._release()
        return self._returncode if self._returncode is not None else -signal.SIGKILL

    async def _classify(self, exc: RayActorError) -> ExitKind:
        text = str(exc).lower()
        if "node" in text and ("died" in text or "dead" in text):
            return ExitKind.NODE_LOST
        # The node table is Ray's to answer, and asking blocks: off the event loop.
        if not await asyncio.to_thread(self._alive, self.node_id):
            return ExitKind.NODE_LOST
        return ExitKind.ACTOR_DIED

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

    async def stop(self, timeout_s: float = 10.0) -> int:
        if self._returncode is None:
            with contextlib.suppress(RayActorError):
                self._last_tail = await self.actor.log_tail.remote(20)
            try:
                code = int(await self.actor.stop.remote(timeout_s))
                self._finish(code, ExitKind.EXITED)
            except RayActorError as exc:
                self._finish(-signal.SIGKILL, await self._classify(exc))
        self._release()
        return self._returncode if self._returncode is not None else -signal.SIGKILL

    async def kill(self) -> None:
        if self._returncode is None:
            with contextlib.suppress(RayActorError):
                self._last_tail = await self.actor.log_tail.remote(20)
            try:
                self._finish(int(await self.actor.kill.remote()), ExitKind.EXITED)
            except RayActorError as exc:
                self._finish(-signal.SIGKILL, await self._classify(exc))
        self._release()

    async def tend(self) -> None:
        """The engine's log is on its host: its actor rotates it there, asked at most once per
        ``TEND_EVERY_S``."""
        now = time.monotonic()
        if self._returncode is not None or now - self._tended < TEND_EVERY_S:
            return
        self._tended = now
        with contextlib.suppress(RayActorError):
            await self.actor.tend.remote(self._log_max_bytes)

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)

    def log_tail(self, lines: int = 20) -> str:
        if self._returncode is None or not self._last_tail:
            with contextlib.suppress(RayActorError, GetTimeoutError):
                self._last_tail = str(ray.get(self.actor.log_tail.remote(lines), timeout=5))
        return "\n".join(self._last_tail.splitlines()[-lines:])


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

    def connect(self) -> None:
        if not ray.is_initialized():
            if self.token_file is not None:
                # Ray reads its token authentication settings from the environment.
                os.environ.update(auth_env(self.token_file))
            with _signals_kept():
                ray.init(
                    address=self.address,
                    namespace=NAMESPACE,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )

    # -- placement --------------------------------------------------------------------------

    def live_nodes(self) -> dict[str, str]:
        """host name -> Ray node id of every live node that joined as a llama-orch host."""
        return {host: live.node_id for host, live in self._live_hosts().items()}

    def _live_hosts(self) -> dict[str, _LiveHost]:
        """host name -> what placement needs of every live llama-orch host."""
        out: dict[str, _LiveHost] = {}
        for node in _nodes():
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
        self.connect()
        leaked = [s for s in spec.secrets if s and any(s in a for a in spec.argv)]
        if leaked:
            raise LaunchError(
                f"{spec.pool_id}/{spec.replica_id}: a secret is on the engine's command line; "
                "pass it through the environment (it would show in every process list)"
            )
        adopted = await self._adopt(spec)
        if adopted is not None:
            return adopted
        # Asking Ray for its node table and actors blocks (for as long as the head is away).
        host, node_id = await asyncio.to_thread(self.choose_host, spec.node, spec.devices)
        name = ENGINE_PREFIX + spec.key
        await asyncio.to_thread(_kill_leftover, name)
        actor: Any = _RemoteEngine.options(
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
        argv = _templated(spec)
        shown = redact_argv(argv, spec.secrets)
        log_path = os.path.join(self.log_dir, f"{spec.key}.log")
        ref = actor.start.remote(argv, spec.env, spec.devices, log_path, shown, identity_of(spec))
        try:
            pending = asyncio.wrap_future(ref.future())
            async with asyncio.timeout(self.placement_timeout_s):
                info = await pending
        except TimeoutError:
            ray.kill(actor, no_restart=True)
            raise LaunchError(
                f"{spec.pool_id}/{spec.replica_id} stayed pending {self.placement_timeout_s:.0f} s "
                f"on host {host}: GPUs {list(spec.devices)} are booked by another replica or "
                "the host lacks them (see `ray status`)"
            ) from None
        except RayActorError as exc:
            raise LaunchError(f"{spec.pool_id}/{spec.replica_id} on host {host}: {exc}") from exc
        except ActorUnschedulableError as exc:
            # The host left between choosing it and placing the actor: wait for the cluster.
            with contextlib.suppress(RayError):
                ray.kill(actor, no_restart=True)
            gone = not await asyncio.to_thread(self._alive, node_id)
            raise (NoLiveHost if gone else LaunchError)(
                f"{spec.pool_id}/{spec.replica_id} cannot be placed on host {host}"
                + (": the host left the cluster" if gone else f": {exc}")
            ) from exc
        except OSError as exc:
            ray.kill(actor, no_restart=True)
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

    def _engine(
        self, spec: LaunchSpec, actor: Any, host: str, node_id: str, info: Mapping[str, Any]
    ) -> RayEngine:
        endpoint = f"http://{info['host']}:{info['port']}"
        pid, log_path = int(info["pid"]), str(info["log_path"])
        return RayEngine(
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
        runs is kept for that replica's first launch to adopt; the others are stopped."""
        self.connect()
        stopped: list[int] = []
        for name in self.engine_actors():
            key = name.removeprefix(ENGINE_PREFIX)
            try:
                actor = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
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
        survivors, self._survivors = self._survivors, {}
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
        live = await asyncio.to_thread(self._live_hosts)
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

        Asking Ray (the node table, the agents) blocks, so the poll runs in a worker thread.
        """
        return await asyncio.to_thread(self._poll, deadline_s)

    async def host_inventories(self, deadline_s: float) -> dict[str, GpuInventory | None]:
        found = await self.inventories(deadline_s)
        return {h: None if f is None else gpu_inventory(f) for h, f in found.items()}

    def _poll(self, deadline_s: float) -> dict[str, dict[str, Any] | None]:
        out: dict[str, dict[str, Any] | None] = {h.name: None for h in self.hosts}
        try:
            self.connect()
            live = self.live_nodes()
            refs = {
                host.name: self._agent(host, live[host.name]).inventory.remote()
                for host in self.hosts
                if host.name in live
            }
        except (RayError, ConnectionError):
            # The head itself is unreachable: no host can be vouched for (the pool manager
            # says which hosts turned stale).
            return out
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
        return out

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


#: How long an engine actor left by a previous run gets to describe itself or to stop.
_ASK_S = 5.0


async def _describe(actor: Any) -> dict[str, Any] | None:
    """The actor's ``describe``; None when it does not answer in time."""
    try:
        ref = actor.describe.remote()
        async with asyncio.timeout(_ASK_S):
            found: dict[str, Any] = await asyncio.wrap_future(ref.future())
    except (RayError, TimeoutError):
        return None
    return found


async def _stop_actor(actor: Any) -> int | None:
    """Stop the engine's process group, then the actor; the engine's pid if it answered."""
    pid = None
    with contextlib.suppress(RayError, TimeoutError):
        ref = actor.pid.remote()
        async with asyncio.timeout(_ASK_S):
            pid = int(await asyncio.wrap_future(ref.future()))
        await actor.stop.remote(_ASK_S)
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)
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


def _nodes() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return found


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
