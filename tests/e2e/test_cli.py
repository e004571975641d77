"""The llorch command as a user runs it: real subprocesses, real files, a real server."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.support.serve_process import free_port
from tests.support.server import config_of, mock_pool, running_server, task_body

ROOT = Path(__file__).resolve().parents[2]
LLORCH = [sys.executable, "-m", "llama_orch"]


async def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *LLORCH,
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class TestConfigCommands:
    async def test_validate_reports_paths_and_exit_code(self, tmp_path: Path) -> None:
        """`llorch config validate` exits 2 and names each offending key, without a traceback."""
        bad = tmp_path / "bad.yaml"
        bad.write_text("pools:\n  - {id: p0, engine: mock, model: m0, slotz: 1}\n")
        code, _, err = await run("config", "validate", str(bad), "examples/demo.yaml")
        assert 2 == code
        assert "pools.0.slotz: unknown key" in err
        assert "Traceback" not in err

    async def test_validate_ok(self) -> None:
        """A good file is reported ok with its pool count."""
        code, out, _ = await run("config", "validate", "examples/demo.yaml")
        assert (0, "examples/demo.yaml: ok (2 pools)\n") == (code, out)

    async def test_every_example_validates(self) -> None:
        """Each examples/*.yaml is a file `llorch config validate --offline` accepts as shipped."""
        examples = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("examples/*.yaml"))
        code, out, err = await run("config", "validate", "--offline", *examples)
        assert (0, "") == (code, err)
        assert len(examples) == out.count(": ok (")

    async def test_validate_applies_the_checks_serve_applies(self, tmp_path: Path) -> None:
        """validate refuses what serve would (a public bind without a token, an unset
        api_key_env); --offline checks the file alone."""
        config = tmp_path / "public.yaml"
        config.write_text(
            "server: {bind_addr: '0.0.0.0:8080'}\n"
            "gpus: {simulated: [{index: 0, name: sim, vram_mb: 1024}]}\n"
            "pools:\n"
            "  - {id: p0, engine: mock, model: m0}\n"
            "  - {id: o, engine: openai, model: gpt, endpoint: 'https://example.invalid',\n"
            "     api_key_env: LLORCH_TEST_UNSET_KEY, provisioning: {mode: external}}\n"
        )
        env = {"AUTH_TOKEN": "", "BIND_ADDR": ""}
        code, _, err = await run("config", "validate", str(config), env=env)
        assert 2 == code and "LLORCH_TEST_UNSET_KEY" in err
        code, _, err = await run(
            "config", "validate", str(config), env={**env, "LLORCH_TEST_UNSET_KEY": "k"}
        )
        assert 2 == code and "NON_LOOPBACK_WITHOUT_TOKEN" in err
        code, out, _ = await run("config", "validate", "--offline", str(config), env=env)
        assert (0, f"{config}: ok (2 pools)\n") == (code, out)

    async def test_a_real_engine_without_a_gpu_fails_fast(self, tmp_path: Path) -> None:
        """On a machine without NVIDIA GPUs (and no simulated inventory) a llama.cpp pool is
        refused up front, naming the fix; --offline does not look at the machine."""
        from llama_orch.pool.gpus import nvml_inventory

        if nvml_inventory().gpus:
            pytest.skip("this machine has an NVIDIA GPU")
        config = tmp_path / "cpp.yaml"
        config.write_text(
            "pools:\n"
            "  - {id: cpp, engine: llamacpp, model: m, endpoint: 'http://127.0.0.1:9',\n"
            "     provisioning: {mode: external}}\n"
        )
        code, _, err = await run("config", "validate", str(config))
        assert 2 == code and "needs an NVIDIA GPU" in err and "no CPU" in err
        # A free port: the refusal must be the missing GPU, not a port someone else holds.
        bind = f"127.0.0.1:{free_port()}"
        code, _, err = await run("serve", "--config", str(config), "--bind", bind)
        assert 2 == code and "needs an NVIDIA GPU" in err
        code, _, _ = await run("config", "validate", "--offline", str(config))
        assert 0 == code

    async def test_serve_refuses_a_bad_config(self, tmp_path: Path) -> None:
        """`llorch serve` on an invalid file exits 2 with the problem, not a traceback."""
        bad = tmp_path / "bad.yaml"
        bad.write_text("pools: []\n")
        code, _, err = await run("serve", "--config", str(bad))
        assert 2 == code and "pools" in err and "Traceback" not in err

    async def test_serve_refuses_missing_file(self) -> None:
        """A missing config file is a clear error."""
        code, _, err = await run("serve", "--config", "does-not-exist.yaml")
        assert 2 == code and "cannot read" in err

    async def test_serve_on_an_address_not_here_exits_1_saying_so(self) -> None:
        """An address no interface of this machine has is a one-line refusal (exit 1)."""
        code, _, err = await run(
            "serve",
            "--config",
            "examples/demo.yaml",
            "--bind",
            "192.0.2.1:8080",
            env={"AUTH_TOKEN": "t" * 32},
        )
        assert 1 == code and "cannot listen on 192.0.2.1:8080" in err
        assert "Traceback" not in err

    async def test_schema_matches_committed_file(self) -> None:
        """`llorch config schema` prints the committed contracts/config.schema.json."""
        code, out, _ = await run("config", "schema")
        assert (0, (ROOT / "contracts/config.schema.json").read_text()) == (code, out)


class TestClientCommands:
    async def test_submit_streams_tokens(self) -> None:
        """`llorch submit` prints queue position and prediction, then streams the tokens."""
        async with running_server(config_of(mock_pool(model="m0"))) as srv:
            code, out, err = await run(
                "submit",
                "--max-tokens",
                "5",
                "--seed",
                "3",
                "a prompt",
                env={"LLORCH_URL": srv.url},
            )
        assert 0 == code
        assert "queue position 0" in err and "predicted start" in err
        assert 5 == len(out.split())
        assert "done: 5 tokens" in err

    async def test_submit_error_exits_nonzero(self) -> None:
        """A refused task makes `llorch submit` exit non-zero with the code and message."""
        async with running_server(config_of()) as srv:
            code, _, err = await run("submit", "--ctx", "999999", "p", env={"LLORCH_URL": srv.url})
        assert 1 == code and "INVALID_PARAMS" in err

    async def test_submit_to_no_such_pool_lists_the_pools(self) -> None:
        """A --pool or --model nothing serves says what was asked and what is served."""
        async with running_server(config_of()) as srv:
            code, _, err = await run("submit", "--pool", "nope", "p", env={"LLORCH_URL": srv.url})
        assert 1 == code
        assert "no Ready pool matches --pool nope; pools: p0 (mock, m0)" in err

    async def test_unreachable_server(self) -> None:
        """Pointing the CLI at nothing fails with a hint instead of a traceback."""
        code, _, err = await run("submit", "x", "--url", "http://127.0.0.1:9")
        assert 3 == code and "cannot reach" in err

    async def test_cancel_command(self) -> None:
        """`llorch cancel` cancels a running task."""
        async with running_server(config_of(mock_pool(mock={"hang_after_token": 0}))) as srv:
            body = task_body()
            await srv.submit(body)
            code, _, err = await run("cancel", body["task_id"], "--url", srv.url)
            frames = await srv.stream(body["task_id"])
        assert 0 == code and "canceled" in err
        assert frames[-1][1]["canceled"] is True
