"""The Ray launcher on a local cluster: placement on the named host and its GPUs, pending
masks, actor death, host loss and re-placement, remote inventory (simulated GPUs)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
import ray

from llama_orch.pool.launch import EngineHandle, ExitKind, LaunchError
from llama_orch.pool.launch.ray import (
    NAMESPACE,
    VERSION_LABEL,
    HostSpec,
    RayLauncher,
    gpu_resource,
    node_resources,
    release_label,
)
from tests.cluster.test_launcher_contract import engine_spec
from tests.support.cluster import HOSTS, OBJECT_STORE_BYTES, LocalCluster, engines_running
from tests.support.engines import engine_healthy

# The first test of the package also waits for the cluster to start (about 10-30 s).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def _launcher(tmp_path: Path, timeout_s: float = 30.0) -> RayLauncher:
    return RayLauncher(HOSTS, log_dir=str(tmp_path / "logs"), placement_timeout_s=timeout_s)


async def _gone(tmp_path: Path) -> list[int]:
    for _ in range(200):
        if not engines_running(tmp_path / "models"):
            return []
        await asyncio.sleep(0.05)
    return engines_running(tmp_path / "models")


class TestPlacement:
    async def test_the_mask_lands_on_the_named_host(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        """The actor runs on gpu-b's node and books exactly GPU 1 there; GPU 0 stays free."""
        launcher = _launcher(tmp_path)
        handle = await launcher.launch(engine_spec(tmp_path, node="gpu-b"))
        try:
            await engine_healthy(handle.endpoint)
            assert "gpu-b" == handle.host
            assert cluster.nodes["gpu-b"].node_id == handle.node_id
            assert "CUDA_VISIBLE_DEVICES=1," in await handle.read_log_tail(5)
            available = ray.available_resources()
            # Of the two hosts' GPUs 0 and 1, only the one GPU 1 is booked.
            assert 2.0 == available[gpu_resource(0)]
            assert 1.0 == available.get(gpu_resource(1), 0.0)
        finally:
            assert 0 == await handle.stop(timeout_s=10)
        assert [] == await _gone(tmp_path)

    async def test_a_double_booked_mask_stays_pending_and_times_out(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        """A second replica asking for a GPU in use waits, then fails saying why."""
        first = await _launcher(tmp_path).launch(engine_spec(tmp_path, node="gpu-a"))
        impatient = _launcher(tmp_path, timeout_s=2.0)
        try:
            with pytest.raises(LaunchError, match=r"stayed pending 2 s on host gpu-a: GPUs \[1\]"):
                await impatient.launch(engine_spec(tmp_path, node="gpu-a", replica="r1"))
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
            assert "llorch-engine-p0-r1" not in names
        finally:
            await first.stop(timeout_s=10)
        assert [] == await _gone(tmp_path)

    async def test_a_mask_the_host_did_not_join_with_is_refused_at_once(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        """The config says gpu-a has GPU 2, but gpu-a joined with GPUs 0 and 1 only: the launch
        says so instead of waiting out the placement timeout with a guess."""
        hosts = [HostSpec("gpu-a", (0, 1, 2)), *HOSTS[1:]]
        launcher = RayLauncher(hosts, log_dir=str(tmp_path / "logs"), placement_timeout_s=3)
        with pytest.raises(LaunchError) as info:
            await launcher.launch(engine_spec(tmp_path, node="gpu-a", devices=(2,)))
        assert "host gpu-a joined with GPUs [0, 1], not GPU [2] of this replica" in str(info.value)
        assert "llorch node join" in str(info.value)
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        assert "llorch-engine-p0-r0" not in names

    async def test_a_host_of_another_release_is_refused(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        """gpu-c joined with another llama-orch release (upgraded here, not there): its engine
        actors would run other code, so the launch says which releases differ."""
        node = cluster.cluster.add_node(
            num_cpus=1,
            resources=node_resources("gpu-c", 1),
            object_store_memory=OBJECT_STORE_BYTES,
            labels={VERSION_LABEL: "0.0.9"},
        )
        try:
            cluster.cluster.wait_for_nodes()
            hosts = [*HOSTS, HostSpec("gpu-c", (0,))]
            launcher = RayLauncher(hosts, log_dir=str(tmp_path / "logs"), placement_timeout_s=3)
            with pytest.raises(LaunchError) as info:
                await launcher.launch(engine_spec(tmp_path, node="gpu-c", devices=(0,)))
            assert f"host gpu-c runs llama-orch 0.0.9, this server {release_label()}" in str(
                info.value
            )
        finally:
            cluster.cluster.remove_node(node)

    async def test_a_secret_on_the_command_line_is_refused(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        spec = engine_spec(tmp_path, node="gpu-a")
        leaky = type(spec)(
            spec.pool_id,
            spec.replica_id,
            (*spec.argv, "--api-key", spec.secrets[0]),
            spec.port,
            secrets=spec.secrets,
            node="gpu-a",
        )
        with pytest.raises(LaunchError, match="through the environment"):
            await _launcher(tmp_path).launch(leaky)


class TestFailures:
    async def test_a_killed_actor_is_actor_died_and_takes_its_engine(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        launcher = _launcher(tmp_path)
        handle = await launcher.launch(engine_spec(tmp_path, node="gpu-a"))
        await engine_healthy(handle.endpoint)
        ray.kill(ray.get_actor("llorch-engine-p0-r0", namespace=NAMESPACE), no_restart=True)
        assert -signal.SIGKILL == await asyncio.wait_for(handle.wait(), 30)
        assert ExitKind.ACTOR_DIED == handle.exit_kind
        assert [] == await _gone(tmp_path)

    async def test_a_lost_host_is_node_lost_and_the_replica_goes_elsewhere(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        """Removing gpu-a ends its replica as node_lost, leaves no engine behind, and the next
        launch of the same replica lands on gpu-b, the other host with GPU 1."""
        launcher = _launcher(tmp_path)
        spec = engine_spec(tmp_path, node="gpu-a")
        handle = await launcher.launch(spec)
        await engine_healthy(handle.endpoint)
        cluster.remove("gpu-a")
        await asyncio.wait_for(handle.wait(), 30)
        assert ExitKind.NODE_LOST == handle.exit_kind
        await handle.stop(timeout_s=1)
        assert [] == await _gone(tmp_path)
        again = await launcher.launch(spec)
        try:
            await engine_healthy(again.endpoint)
            assert "gpu-b" == again.host
        finally:
            await again.stop(timeout_s=10)
        assert [] == await _gone(tmp_path)


class TestInventory:
    async def test_each_host_reports_its_gpus_and_a_lost_one_is_stale(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        launcher = _launcher(tmp_path)
        found = await launcher.inventories(deadline_s=30)
        for host in HOSTS:
            inv = found[host.name]
            assert inv is not None and inv["simulated"] and inv["host"] == host.name
            assert [0, 1] == [d["index"] for d in inv["devices"]]
            assert cluster.nodes[host.name].node_id == inv["node_id"]
        cluster.remove("gpu-b")
        # Stale once the head has noticed the host is gone (a few health checks).
        for _ in range(100):
            found = await launcher.inventories(deadline_s=1)
            if found["gpu-b"] is None:
                break
            await asyncio.sleep(0.1)
        assert None is found["gpu-b"] and found["gpu-a"] is not None
        cluster.restore()
        rejoined = (await launcher.inventories(deadline_s=30))["gpu-b"]
        assert rejoined is not None and cluster.nodes["gpu-b"].node_id == rejoined["node_id"]


async def _left_running(
    tmp_path: Path, host: str, expected: list[str]
) -> tuple[EngineHandle, RayLauncher, list[int]]:
    """An engine launched by one launcher, and a new launcher (a restarted server) expecting
    ``expected`` that looked for leftovers: the pids it stopped."""
    first = await _launcher(tmp_path).launch(engine_spec(tmp_path, node=host))
    await engine_healthy(first.endpoint)
    again = RayLauncher(HOSTS, log_dir=str(tmp_path / "logs"), expected=expected)
    return first, again, await again.reap_orphans()


class TestAdoption:
    """A launcher made after another's server died (the first launcher's engines run on)."""

    async def test_a_configured_replica_takes_over_its_running_engine(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        """The same replica on a new launcher gets the engine that runs, not a second one."""
        first, again, stopped = await _left_running(tmp_path, "gpu-a", ["p0-r0"])
        assert [] == stopped
        # A new port is allocated for the launch; the running engine keeps its own.
        adopted = await again.launch(engine_spec(tmp_path, node="gpu-a"))
        try:
            assert (first.pid, first.endpoint, "gpu-a") == (
                adopted.pid,
                adopted.endpoint,
                adopted.host,
            )
            await engine_healthy(adopted.endpoint)
            assert [first.pid] == engines_running(tmp_path / "models")
        finally:
            assert 0 == await adopted.stop(timeout_s=10)
        assert [] == await _gone(tmp_path)

    async def test_a_changed_replica_stops_the_old_engine_and_starts_its_own(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        """An engine left with another mask (or command, or environment) is not adopted."""
        first, again, stopped = await _left_running(tmp_path, "gpu-a", ["p0-r0"])
        assert [] == stopped
        fresh = await again.launch(engine_spec(tmp_path, node="gpu-a", devices=(0,)))
        try:
            assert fresh.pid != first.pid
            await engine_healthy(fresh.endpoint)
            assert [fresh.pid] == engines_running(tmp_path / "models")
        finally:
            await fresh.stop(timeout_s=10)
        assert [] == await _gone(tmp_path)

    async def test_an_engine_no_replica_names_is_stopped(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        first, _, stopped = await _left_running(tmp_path, "gpu-b", ["p0-r1"])
        assert [first.pid] == stopped
        assert [] == await _gone(tmp_path)
        assert [] == [a for a in ray.util.list_named_actors() if a.startswith("llorch-engine-")]

    async def test_an_engine_its_replica_never_took_over_is_stopped_at_shutdown(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        """Kept for its replica, whose launch never came (say its model went missing)."""
        _, again, stopped = await _left_running(tmp_path, "gpu-a", ["p0-r0"])
        assert [] == stopped
        await again.close()
        assert [] == await _gone(tmp_path)
        assert [] == [a for a in ray.util.list_named_actors() if a.startswith("llorch-engine-")]


_KEEPS_SIGNALS = """
import signal, sys
from llama_orch.pool.launch.ray import RayLauncher

def stop(signum, frame):
    print("stopped gracefully")
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
RayLauncher([], address=sys.argv[1]).connect()
print("same handler" if signal.getsignal(signal.SIGTERM) is stop else "handler replaced")
"""


class TestProcess:
    async def test_connecting_leaves_the_servers_sigterm_handler_in_place(
        self, cluster: LocalCluster
    ) -> None:
        """ray.init on the main thread would make SIGTERM exit at once; a server told to stop
        must still stop its engines and end its streams, so its own handler stays."""
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _KEEPS_SIGNALS,
            cluster.address,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(child.communicate(), timeout=120)
        assert "same handler" == out.decode().strip().splitlines()[-1], err.decode()[-2000:]
