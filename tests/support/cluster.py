"""A Ray cluster on this machine: a head and two GPU hosts with fake GPU resources (simulated).

Started once for the tests/cluster package (about 10 s) and shared; a test that removes a
host adds it back through ``restore`` so the next test finds both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from llama_orch.pool.launch.ray import ENGINE_PREFIX, HostSpec, RayLauncher, node_resources

#: The object store Ray needs at least; each node keeps no objects beyond small results.
OBJECT_STORE_BYTES = 80 * 2**20
#: Two GPUs per host, 8 GiB each (simulated).
HOSTS = (HostSpec("gpu-a", (0, 1), 8 * 2**30), HostSpec("gpu-b", (0, 1), 8 * 2**30))
#: Node failures are detected within about a second instead of Ray's default 30 s.
_FAST_HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_failure_threshold": 3,
}


@dataclass
class LocalCluster:
    cluster: Cluster
    nodes: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add(self, host: HostSpec) -> None:
        self.nodes[host.name] = self.cluster.add_node(
            num_cpus=1,
            resources=node_resources(host.name, len(host.gpus)),
            object_store_memory=OBJECT_STORE_BYTES,
        )
        self.cluster.wait_for_nodes()

    def remove(self, name: str) -> None:
        """The host is gone at once, as if it lost power: its Ray processes and the worker
        processes running its actors (Ray's own removal lets workers linger a moment)."""
        node = self.nodes.pop(name)
        workers = _children(node.all_processes["raylet"][0].process.pid)
        self.cluster.remove_node(node, allow_graceful=False)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def restore(self) -> None:
        for host in HOSTS:
            if host.name not in self.nodes:
                self.add(host)
        wait_live(self.address)


def start_cluster() -> Iterator[LocalCluster]:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "object_store_memory": OBJECT_STORE_BYTES,
            "include_dashboard": False,
            "_system_config": _FAST_HEALTH,
        },
    )
    local = LocalCluster(cluster)
    try:
        for host in HOSTS:
            local.add(host)
        RayLauncher([], address=local.address).connect()
        wait_live(local.address)
        yield local
    finally:
        ray.shutdown()
        cluster.shutdown()


def wait_live(address: str, timeout_s: float = 60.0) -> None:
    """Until Ray reports every host alive with its resources: a node that registered is not
    always listed as alive at once, and a launch in that moment finds no live host."""
    launcher = RayLauncher(list(HOSTS), address=address)
    deadline = time.monotonic() + timeout_s
    wanted = {host.name for host in HOSTS}
    while not wanted <= set(launcher.live_nodes()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"hosts {sorted(wanted)} not all alive after {timeout_s:.0f} s")
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if proc.name.isdigit() and int(stat.rsplit(")", 1)[-1].split()[1]) == pid:
            found.append(int(proc.name))
    return found


def engines_running(marker: Path) -> list[int]:
    """Pids of live processes whose command line names ``marker`` (a test's fake engines: their
    model path, since the fake program execs Python and leaves its own path off the line)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if str(marker).encode() in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def engine_actors() -> list[str]:
    """Named engine actors still alive in the cluster (killed ones leave the list at once)."""
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(ENGINE_PREFIX)
    ]


def kill_engine(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
