"""The Ray head of a running ``llorch serve`` stalls (its GCS stopped with SIGSTOP, as a long
pause or a swapping machine would) for longer than the inventory deadline but shorter than
``cluster.head_lost_after_ms``: the cluster host is stale while it stalls and fresh after, and
the remote replica keeps its engine and serves on (simulated GPUs, fake llama-server)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.cluster.test_head_loss import (
    HOST,
    _config,
    _health,
    _logged,
    _ready_on,
    _served,
    _stale,
    _until,
    head_on,
)
from tests.support.launched import launched_setup
from tests.support.serve_process import free_port, serve_process

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def _gcs_pid(head_pid: int) -> int:
    """The head's GCS process, among the process group ``ray start --head`` leads."""
    found = subprocess.run(
        ["pgrep", "-g", str(head_pid), "-f", "gcs_server"], capture_output=True, text=True
    ).stdout.split()
    assert len(found) == 1, found
    return int(found[0])


class TestHeadStall:
    async def test_a_stalled_head_costs_no_replica_and_a_replaced_one_is_let_go_at_once(
        self, tmp_path: Path
    ) -> None:
        with launched_setup(tmp_path) as setup, head_on(free_port(), tmp_path) as head:
            head.start()
            await head.up()
            work = tmp_path / "serve"
            work.mkdir()
            config = _config(setup, head.address)
            config["pools"] = [p for p in config["pools"] if p["id"] == "remote"]
            # Ample grace: the stall below is a few seconds, however busy this machine is.
            config["cluster"] |= {"head_lost_after_ms": 60_000, "head_exit_timeout_ms": 120_000}
            with serve_process(config, work, start_timeout_s=90) as server:
                async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
                    before = await _health(client, "remote", _ready_on(HOST))
                    assert head.process is not None
                    gcs = _gcs_pid(head.process.pid)
                    os.kill(gcs, signal.SIGSTOP)
                    try:
                        await _until(lambda: _stale(client), True)
                        await _logged(server.log_path, '"action":"head-slow","target":"cluster"')
                        # Stalled past another inventory deadline (2 s).
                        await asyncio.sleep(3.0)
                    finally:
                        os.kill(gcs, signal.SIGCONT)
                    await _until(lambda: _stale(client), False)
                    await _logged(server.log_path, '"action":"head-answers","target":"cluster"')
                    after = await _health(client, "remote", _ready_on(HOST))
                    await _served(client, setup)
                    stalled = server.log_path.read_text()
                    # Stalled again, then replaced by a new head on the same address well
                    # within the grace: never waited on (a call meeting the new cluster could
                    # end the server), let go of at once and found again.
                    os.kill(_gcs_pid(head.process.pid), signal.SIGSTOP)
                    await _logged(server.log_path, "it counts as lost after 60 s", times=2)
                    head.kill()
                    head.start()
                    await _logged(server.log_path, '"action":"head-back","target":"cluster"')
                    await _health(client, "remote", _ready_on(HOST))
                    await _served(client, setup)
            log = server.log_path.read_text()
        # Neither the head nor the replica (its exit narrated as head-lost too) was lost.
        assert '"action":"head-lost"' not in stalled
        was, now = (h["metrics"]["replicas"][0]["process"] for h in (before, after))
        assert (was["pid"], was["restarts"], now["last_exit"]) == (now["pid"], 0, None), now
        lost = [
            line for line in log.splitlines() if '"action":"head-lost","target":"cluster"' in line
        ]
        assert 1 == len(lost), lost
        assert "nothing accepts connections there" in lost[0] or "another cluster" in lost[0]
        assert "Traceback" not in log
