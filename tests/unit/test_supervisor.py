"""Supervisor: crashed loops restart with backoff and are counted; stop waits, then cancels."""

from __future__ import annotations

import asyncio

from llama_orch.observability.metrics import Metrics
from llama_orch.supervisor import Supervisor


class TestLoops:
    async def test_a_crashing_loop_is_restarted_and_counted(self) -> None:
        """A loop that raises runs again after the backoff; the restart shows in the metric."""
        metrics = Metrics()
        supervisor = Supervisor(metrics, backoff_s=0.001)
        runs = 0
        second_run = asyncio.Event()

        async def flaky() -> None:
            nonlocal runs
            runs += 1
            if runs == 1:
                raise StopIteration  # what a bare next() lookup raises
            second_run.set()
            await asyncio.Event().wait()

        supervisor.loop("flaky", flaky)
        await asyncio.wait_for(second_run.wait(), 5)
        restarts = metrics.registry.get_sample_value("background_restarts_total", {"loop": "flaky"})
        assert ({"flaky": 1}, 1.0, ["flaky"]) == (supervisor.restarts, restarts, supervisor.loops)
        await supervisor.stop(0.1)
        assert [] == supervisor.loops

    async def test_a_loop_that_returns_is_finished(self) -> None:
        """Returning is not a crash: nothing restarts it."""
        supervisor = Supervisor()
        done = asyncio.Event()

        async def once() -> None:
            done.set()

        supervisor.loop("once", once)
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.sleep(0)
        assert ([], {}) == (supervisor.loops, supervisor.restarts)


class TestStop:
    async def test_stop_waits_for_jobs_then_cancels_them(self) -> None:
        """A job that ends within the grace period finishes; one that does not is canceled."""
        supervisor = Supervisor()
        release = asyncio.Event()

        async def quick() -> str:
            await release.wait()
            return "done"

        async def stuck() -> None:
            await asyncio.Event().wait()

        ok = supervisor.job(quick(), name="quick")
        hung = supervisor.job(stuck(), name="stuck")
        asyncio.get_running_loop().call_soon(release.set)
        await supervisor.stop(0.05)
        assert ("done", True) == (ok.result(), hung.cancelled())

    async def test_a_failed_job_is_counted(self) -> None:
        """An error in a job is logged and counted, never lost."""
        supervisor = Supervisor()

        async def broken() -> None:
            raise RuntimeError("boom")

        task = supervisor.job(broken(), name="broken")
        await asyncio.wait({task})
        await asyncio.sleep(0)
        assert 1 == supervisor.failed_jobs

    async def test_draining_jobs_does_not_wait_for_owned_work(self) -> None:
        """An engine's supervision runs until its owner stops it: draining the jobs at
        shutdown must not wait the whole grace period for it (nor cancel it ahead of its
        owner); ``stop`` cancels it if the owner did not."""
        supervisor = Supervisor()
        engine = supervisor.owned(asyncio.Event().wait(), name="engine-p0-r0")
        runner = supervisor.job(asyncio.sleep(0), name="runner")
        await asyncio.wait_for(supervisor.drain_jobs(3600), 30)
        assert (True, False) == (runner.done(), engine.done())
        await supervisor.stop(0)
        assert engine.cancelled()
