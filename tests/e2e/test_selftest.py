"""`llorch selftest` against a real server, as an operator runs it after start-up."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_cli import run
from tests.support.server import config_of, mock_pool, running_server


class TestSelftest:
    async def test_healthy_server_passes(self, tmp_path: Path) -> None:
        """Every check is ok on a healthy two-pool server, and the command exits 0."""
        log = tmp_path / "serve.log"
        log.write_text('{"level":"info","event":"request"}\n')
        config = config_of(mock_pool("p0"), mock_pool("p1", devices=[1]))
        async with running_server(config) as srv:
            code, out, _ = await run("selftest", "--url", srv.url, "--log", str(log))
        assert 0 == code, out
        checks = [line.split(":")[0].split(None, 1) for line in out.splitlines()]
        assert [
            ["ok", "preload"],
            ["ok", "decode p0"],
            ["ok", "decode p1"],
            ["ok", "cancel"],
            ["ok", "metrics"],
            ["ok", "log"],
        ] == checks

    async def test_failures_are_named_and_exit_non_zero(self, tmp_path: Path) -> None:
        """An unready pool and an error in the log fail with reasons; the rest still runs."""
        log = tmp_path / "serve.log"
        log.write_text('{"level":"error","human":"Fails on GET /x: boom."}\n')
        config = config_of(mock_pool("p0"), mock_pool("p1", devices=[1], mock={"ready": False}))
        async with running_server(config) as srv:
            code, out, err = await run("selftest", "--url", srv.url, "--log", str(log))
        assert 1 == code
        assert "FAIL  preload: not Ready: p1" in out
        assert "ok    decode p0" in out and "decode p1" not in out
        assert "FAIL  log: 1 error lines, first: Fails on GET /x: boom." in out
        assert "selftest failed: 2 of the checks" in err

    async def test_unreachable_server(self) -> None:
        """Nothing listening: exit 3 with the URL."""
        code, _, err = await run("selftest", "--url", "http://127.0.0.1:9")
        assert 3 == code and "cannot reach http://127.0.0.1:9" in err
