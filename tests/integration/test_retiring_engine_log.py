"""A replica retiring during a reload's wind-down keeps its engine's log bounded until the
engine is stopped: a chatty engine must not fill the disk for as long as the drain lasts."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sys
from pathlib import Path

from llama_orch.config import EnginesConfig, PoolConfig
from llama_orch.core.clock import ManualClock
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.engine_process import (
    EngineCache,
    ProbeResult,
    ProcessState,
    ReplicaEngine,
    Supervision,
)
from llama_orch.pool.launch import LaunchSpec, LocalLauncher
from llama_orch.pool.launch.local import LocalProcess
from llama_orch.provisioners.engine import PreparedEngine, ProvisionContext
from llama_orch.supervisor import Supervisor

#: Writes lines until stopped (a pause between them keeps the machine's cores free).
_CHATTY = (
    "import sys, time\n"
    "while True:\n"
    "    sys.stdout.write('chatter ' * 100 + '\\n'); sys.stdout.flush(); time.sleep(0.001)\n"
)


class Prepared(EngineCache):
    async def prepared(self, cfg: PoolConfig) -> PreparedEngine:
        return PreparedEngine("llamacpp", "b1", "binary", binary_path="/opt/llama-server")


class RetiredAtLaunch:
    """Launches the chatty program in place of the engine; the replica is retired (a reload
    replaced it) the moment its engine runs, so its whole watch is a wind-down."""

    def __init__(self, run_dir: Path) -> None:
        self.local = LocalLauncher(run_dir, log_max_bytes=16 * 1024)
        self.engine: ReplicaEngine | None = None
        self.handle: LocalProcess | None = None

    async def launch(self, spec: LaunchSpec) -> LocalProcess:
        self.handle = await self.local.launch(
            dataclasses.replace(spec, argv=(sys.executable, "-c", _CHATTY))
        )
        assert self.engine is not None
        self.engine.retiring = True
        return self.handle

    async def reap_orphans(self) -> list[int]:
        return []

    async def close(self) -> None:
        pass


async def test_a_retiring_replicas_log_is_still_rotated(tmp_path: Path) -> None:
    cfg = PoolConfig.model_validate(
        {
            "id": "chatty",
            "engine": "llamacpp",
            "model": "m.gguf",
            "devices": [0],
            "provisioning": {
                "mode": "binary",
                "binary": {"url": "https://x/l.tgz", "checksum": "sha256:" + "0" * 64},
            },
        }
    )
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    context = ProvisionContext(cache_root=tmp_path / "engines", simulated=True)
    launcher = RetiredAtLaunch(tmp_path / "run")
    supervision = Supervision(
        launcher=launcher,
        provision=context,
        engines=EnginesConfig(),
        locate_model=lambda _cfg: str(model),
        rng=random.Random(0),
        clock=ManualClock(),
    )

    async def bind(_cfg: PoolConfig, _replica: str, _endpoint: str) -> None:
        pass

    async def probe() -> ProbeResult:
        return ProbeResult(ready=False, engine_healthy=False)

    metrics = Metrics()
    engine = ReplicaEngine(
        cfg,
        "r0",
        (0,),
        ProcessState(),
        supervision,
        Prepared(context),
        metrics,
        bind=bind,
        probe=probe,
        lost=lambda *_: None,
        probe_interval_s=0.05,
    )
    launcher.engine = engine
    supervisor = Supervisor(metrics)
    engine.start(supervisor)
    rotated = tmp_path / "run" / "logs" / "chatty-r0.log.1"
    try:
        # Bounded: the engine writes ~800 KB/s, the bound is 16 KiB, the cadence 50 ms.
        for _ in range(200):
            if rotated.exists():
                break
            await asyncio.sleep(0.05)
        assert launcher.handle is not None and launcher.handle.returncode is None
    finally:
        await engine.stop()
        await supervisor.stop(1.0)
    assert rotated.exists(), "the retiring engine's log was never rotated"
