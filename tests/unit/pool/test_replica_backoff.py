"""A replica of a cluster pool that finds no live host waits longer and is never counted toward
the restart-storm breaker; a real launch failure is (manual clock: no real waiting)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
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
from llama_orch.pool.launch import EngineHandle, LaunchError, LaunchSpec, NoLiveHost
from llama_orch.provisioners.engine import PreparedEngine, ProvisionContext
from llama_orch.supervisor import Supervisor

STORM = 3


class ScriptedLauncher:
    """Fails every launch with the error the test sets (no cluster here)."""

    def __init__(self, error: LaunchError) -> None:
        self.error = error
        self.calls = 0

    async def launch(self, spec: LaunchSpec) -> EngineHandle:
        self.calls += 1
        raise self.error

    async def reap_orphans(self) -> list[int]:
        return []

    async def close(self) -> None:
        pass


class Prepared(EngineCache):
    """An engine already ensured (the provisioning path has suites of its own)."""

    async def prepared(self, cfg: PoolConfig) -> PreparedEngine:
        return PreparedEngine("llamacpp", "b1", "binary", binary_path="/opt/llama-server")


def _engine(
    tmp_path: Path,
    launcher: ScriptedLauncher,
    clock: ManualClock,
    metrics: Metrics,
    errors: list[str] | None = None,
) -> ReplicaEngine:
    cfg = PoolConfig.model_validate(
        {
            "id": "wide",
            "engine": "llamacpp",
            "model": "m.gguf",
            "hosts": ["gpu-a", "gpu-b"],
            "devices": [1],
            "provisioning": {
                "mode": "binary",
                "binary": {
                    "url": "https://x/l.tgz",
                    "checksum": "sha256:" + "0" * 64,
                },
            },
            "backoff": {"initial_ms": 100, "max_ms": 1000, "jitter": False},
        }
    )
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    context = ProvisionContext(cache_root=tmp_path / "engines", simulated=True)
    supervision = Supervision(
        launcher=launcher,
        provision=context,
        engines=EnginesConfig(restart_storm={"failures": STORM, "window_s": 600}),
        locate_model=lambda _cfg: str(model),
        rng=random.Random(0),
        clock=clock,
    )

    async def bind(_cfg: PoolConfig, _replica: str, _endpoint: str) -> None:
        raise AssertionError("nothing launches here")

    async def probe() -> ProbeResult:
        return ProbeResult(ready=False, engine_healthy=False)

    return ReplicaEngine(
        cfg,
        "r0",
        (1,),
        ProcessState(),
        supervision,
        Prepared(context),
        metrics,
        bind=bind,
        probe=probe,
        lost=lambda error, *_: (errors if errors is not None else []).append(error),
        probe_interval_s=1.0,
    )


async def _until(condition: Callable[[], object]) -> None:
    """Let the replica's loop run until ``condition()`` holds (no real time passes)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the replica's loop never got there")


async def _waits(
    engine: ReplicaEngine, launcher: ScriptedLauncher, clock: ManualClock, launches: int
) -> list[int]:
    """The wait after each of the first ``launches`` launches, the clock moved past each."""
    waits = []
    for attempt in range(1, launches + 1):
        await _until(lambda a=attempt: launcher.calls == a and engine.state.backoff_ms)
        waits.append(engine.state.backoff_ms)
        clock.advance(engine.state.backoff_ms / 1000)
    return waits


@contextlib.asynccontextmanager
async def _supervised(
    tmp_path: Path, error: LaunchError, errors: list[str] | None = None
) -> AsyncIterator[tuple[ReplicaEngine, ScriptedLauncher, ManualClock, Metrics]]:
    """A replica whose every launch fails with ``error``, supervised until the block ends;
    the errors it publishes go to ``errors``."""
    clock, metrics = ManualClock(), Metrics()
    launcher = ScriptedLauncher(error)
    engine = _engine(tmp_path, launcher, clock, metrics, errors)
    supervisor = Supervisor(metrics)
    engine.start(supervisor)
    try:
        yield engine, launcher, clock, metrics
    finally:
        await engine.stop()
        await supervisor.stop(1.0)


class TestNoLiveHost:
    async def test_waits_longer_each_time_and_never_opens_the_breaker(self, tmp_path: Path) -> None:
        error = NoLiveHost("no live host has GPUs [1]")
        async with _supervised(tmp_path, error) as (engine, launcher, clock, metrics):
            waits = await _waits(engine, launcher, clock, 2 * STORM + 2)
            # From the pool's longest backoff (1 s), doubling, capped at two minutes.
            assert [1000, 2000, 4000, 8000, 16000, 32000, 64000, 120000] == waits
            state = engine.state
            assert (False, 0, False) == (state.storm, state.restarts, engine.done)
            restarts = metrics.registry.get_sample_value(
                "pool_restarts_total", {"pool_id": "wide", "reason": "launch_failed"}
            )
            assert restarts in (None, 0.0)

    async def test_a_host_coming_back_ends_the_wait_and_starts_it_over(
        self, tmp_path: Path
    ) -> None:
        """After the hosts were away a while the wait has grown to minutes; a host answering
        again must not leave the replica sleeping it out (no clock is moved here)."""
        error = NoLiveHost("no live host has GPUs [1]")
        async with _supervised(tmp_path, error) as (engine, launcher, clock, _):
            assert [1000, 2000, 4000, 8000] == await _waits(engine, launcher, clock, 4)
            await _until(lambda: launcher.calls == 5 and engine.state.backoff_ms == 16000)
            engine.host_back()
            await _until(lambda: launcher.calls == 6 and engine.state.backoff_ms)
            assert 1000 == engine.state.backoff_ms

    async def test_a_host_coming_back_does_not_cut_a_failure_backoff(self, tmp_path: Path) -> None:
        """Only a wait for a host ends early: a real launch failure's backoff is the breaker's
        business."""
        error = LaunchError("GPUs [1] are booked by another replica")
        async with _supervised(tmp_path, error) as (engine, launcher, _clock, _):
            await _until(lambda: launcher.calls == 1 and engine.state.backoff_ms)
            engine.host_back()
            for _ in range(200):
                await asyncio.sleep(0)
            assert (1, 100) == (launcher.calls, engine.state.backoff_ms)

    async def test_other_launch_failures_still_open_the_breaker(self, tmp_path: Path) -> None:
        """A launch that fails for another reason backs off as before and counts."""
        error = LaunchError("GPUs [1] are booked by another replica")
        async with _supervised(tmp_path, error) as (engine, launcher, clock, _):
            waits = await _waits(engine, launcher, clock, STORM - 1)
            await _until(lambda: engine.done)
            assert ([100, 200], STORM, True) == (waits, launcher.calls, engine.state.storm)
            assert STORM == engine.state.restarts

    async def test_the_storm_names_the_failure_that_opened_it(self, tmp_path: Path) -> None:
        """The breaker's message replaces the replica's last error: it must carry the cause
        (here the launch error), not only the reason's name, or the operator loses it."""
        error = LaunchError("GPUs [1] are booked by another replica")
        errors: list[str] = []
        async with _supervised(tmp_path, error, errors) as (engine, launcher, clock, _):
            await _waits(engine, launcher, clock, STORM - 1)
            await _until(lambda: engine.done)
        assert errors[-1].startswith("restart storm")
        assert "GPUs [1] are booked by another replica" in errors[-1]
