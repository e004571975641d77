"""`llorch pools` as a user runs it: a real subprocess against a real server."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.e2e.test_cli import run
from tests.support.server import SIMULATED_GPUS, config_of, mock_pool, running_server


class TestPoolsCommand:
    async def test_table_then_drain(self) -> None:
        """The table shows each pool's replicas, state, engine, model, GPU, slots and queue;
        `pools drain` drains one and the table says so."""
        config = config_of(mock_pool("p0", "m0"), mock_pool("p1", "m1", devices=[1]))
        async with running_server(config) as srv:
            code, out, _ = await run("pools", "--url", srv.url)
            assert 0 == code
            header, first, _second = out.splitlines()
            assert header.split() == [
                "POOL",
                "REPLICAS",
                "STATE",
                "ENGINE",
                "MODEL",
                "GPU",
                "VRAM",
                "SLOTS",
                "QUEUE",
            ]
            assert ["p0", "1/1", "ready", "(simulated)", "mock@mock-1.0", "m0", "0"] == (
                first.split()[:7]
            )
            assert first.split()[-2:] == ["0/1", "0"]
            code, out, _ = await run("pools", "--url", srv.url, "drain", "p1", "--deadline-ms", "0")
            assert 0 == code and "draining=True" in out
            code, out, _ = await run("pools", "--url", srv.url)
            assert "draining" in out.splitlines()[2]
            code, _, err = await run("pools", "--url", srv.url, "reload", "p0", "other.gguf")
            assert 1 == code and "HTTP 400 INVALID_PARAMS" in err and "does not launch" in err

    async def test_plan_prints_steps_without_a_server(self, tmp_path: Path) -> None:
        """`pools plan` reads the config and prints the provisioning steps."""
        pool = {
            "id": "g0",
            "engine": "llamacpp",
            "model": "/m.gguf",
            "provisioning": {
                "mode": "binary",
                "binary": {
                    "url": "https://example.org/llama-b5000.zip",
                    "checksum": "sha256:" + "ab" * 32,
                },
            },
        }
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"gpus": SIMULATED_GPUS, "pools": [pool]}))
        code, out, _ = await run("pools", "plan", "g0", "--config", str(path))
        assert 0 == code
        assert "pool g0: engine llamacpp, mode binary" in out
        assert "download   https://example.org/llama-b5000.zip" in out

    async def test_plan_mistakes_exit_2(self, tmp_path: Path) -> None:
        """A pool the file lacks, or a file with problems, is a usage mistake: status 2."""
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"pools": [{"id": "p0", "engine": "mock", "model": "m"}]}))
        code, _, err = await run("pools", "plan", "nope", "--config", str(path))
        assert 2 == code and "no pool 'nope'" in err
        path.write_text("pools: [{id: p0, engine: mock, model: m, slotz: 1}]\n")
        code, _, err = await run("pools", "plan", "p0", "--config", str(path))
        assert 2 == code
        assert err.startswith("llorch: invalid configuration") and "pools.0.slotz" in err
