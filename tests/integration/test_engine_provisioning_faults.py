"""What a careless operator or a misbehaving build tool does to engine provisioning: each ends
in one typed, actionable ``ProvisionError``, with nothing left running or half-written."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from llama_orch.config._models import NetworkPolicyConfig
from llama_orch.pool.launch.local import _gone
from llama_orch.provisioners.engine import (
    FileEngineIndex,
    ProvisionContext,
    ProvisionError,
)
from llama_orch.provisioners.engine._steps import run_step

FILES_ONLY = NetworkPolicyConfig(allowed_schemes=["file"])


def _ctx(tmp_path: Path) -> ProvisionContext:
    return ProvisionContext(
        cache_root=tmp_path / "cache",
        index=FileEngineIndex(tmp_path / "catalog"),
        network_policy=FILES_ONLY,
        simulated=True,
    )


class TestSteps:
    async def test_one_huge_output_line_fails_with_a_bounded_tail(self, tmp_path: Path) -> None:
        """A tool printing a 200 kB line without a newline (a progress bar) is read in bounded
        pieces: the step fails as a ProvisionError naming it, its tail cut short."""
        noisy = "import sys; sys.stdout.write('x' * 200_000); sys.exit(2)"
        with pytest.raises(ProvisionError) as caught:
            await run_step(
                "build",
                [sys.executable, "-c", noisy],
                log_path=tmp_path / "log",
                target="t",
            )
        assert "build" == caught.value.step
        assert "status 2" in caught.value.message
        assert len(caught.value.detail or "") < 8_192
        assert 200_000 <= (tmp_path / "log").stat().st_size

    async def test_a_cancelled_step_leaves_no_process_behind(self, tmp_path: Path) -> None:
        """A build cancelled midway (llorch stops) takes its whole process tree with it."""
        pid_file = tmp_path / "child.pid"
        script = f"sleep 60 & echo $! > {pid_file}; wait"
        step = asyncio.ensure_future(
            run_step("build", ["sh", "-c", script], log_path=tmp_path / "log", target="t")
        )
        for _ in range(400):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            await asyncio.sleep(0.025)
        child = int(pid_file.read_text())
        step.cancel()
        with pytest.raises(asyncio.CancelledError):
            await step
        for _ in range(400):
            if _gone(child):
                break
            await asyncio.sleep(0.025)
        assert _gone(child)
