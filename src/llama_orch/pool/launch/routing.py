"""HostRouting: replicas of pools that name a cluster host go to the cluster launcher, the rest
to the local one. Single-host configs never build it (nor import the cluster runtime)."""

from __future__ import annotations

from llama_orch.pool.launch._types import ClusterLauncher, EngineHandle, Launcher, LaunchSpec


class HostRouting:
    def __init__(self, local: Launcher, cluster: ClusterLauncher) -> None:
        self.local = local
        self.cluster = cluster

    async def launch(self, spec: LaunchSpec) -> EngineHandle:
        return await (self.local if spec.node is None else self.cluster).launch(spec)

    async def reap_orphans(self) -> list[int]:
        return [*await self.local.reap_orphans(), *await self.cluster.reap_orphans()]

    async def close(self) -> None:
        await self.local.close()
        await self.cluster.close()
