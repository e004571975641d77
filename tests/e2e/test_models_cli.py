"""``llorch models`` as a user runs it: real subprocesses, on disk and against a real server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from llama_orch.cli.models import render_progress
from tests.e2e.test_cli import run
from tests.support.gguf_files import tiny_llama_gguf
from tests.support.launched import wait_health
from tests.support.server import config_of, mock_pool, running_server


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "llorch.yaml"
    body = {"catalog": {"root": str(tmp_path / "catalog")}, "pools": [mock_pool()]}
    path.write_text(yaml.safe_dump(body))
    return path


class TestModelsCliOnDisk:
    async def test_pull_ls_show_verify_retire_rm(self, tmp_path: Path) -> None:
        """Without a server the commands work on the catalog of --config."""
        model = tiny_llama_gguf(tmp_path / "m.gguf")
        digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
        local = ["models", "--local", "--config", str(config_file(tmp_path))]
        code, out, err = await run(*local, "pull", f"file:{model}", "--digest", digest)
        assert 0 == code, err
        model_id = out.strip()
        assert f"file:{model}" == model_id
        code, out, _ = await run(*local, "ls")
        assert 0 == code and model_id in out and "llama" in out and "pass" in out
        code, out, _ = await run(*local, "show", model_id)
        assert 0 == code and '"block_count": 2' in out
        assert 0 == (await run(*local, "verify", model_id))[0]
        code, out, _ = await run(*local, "retire", model_id)
        assert 0 == code and '"state": "Retired"' in out
        assert 0 == (await run(*local, "rm", model_id))[0]
        code, _, err = await run(*local, "show", model_id)
        assert 1 == code and "not in the catalog" in err

    async def test_bad_ref_and_unreachable_server(self, tmp_path: Path) -> None:
        """A bad ref exits 1 with the accepted forms; no server means the on-disk catalog."""
        cfg = str(config_file(tmp_path))
        code, _, err = await run("models", "--local", "--config", cfg, "pull", "ftp://x/y")
        assert 1 == code and "hf:org/repo" in err
        code, _, err = await run("models", "--url", "http://127.0.0.1:9", "--config", cfg, "ls")
        assert 0 == code and "using the catalog on disk" in err

    async def test_an_unwritable_catalog_is_a_message_not_a_traceback(self, tmp_path: Path) -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        cfg = tmp_path / "llorch.yaml"
        body = {"catalog": {"root": str(blocker / "catalog")}, "pools": [mock_pool()]}
        cfg.write_text(yaml.safe_dump(body))
        model = tiny_llama_gguf(tmp_path / "m.gguf")
        code, _, err = await run("models", "--local", "--config", str(cfg), "pull", f"file:{model}")
        assert 1 == code and "Traceback" not in err
        assert f"cannot use the catalog on disk: {blocker / 'catalog'}" in err

    async def test_a_bad_config_or_damaged_index_is_a_message_not_a_traceback(
        self, tmp_path: Path
    ) -> None:
        """An invalid --config, or a models.json cut short, used to end `llorch models --local`
        with a traceback; each is now one line saying what is wrong and what to do."""
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({"pools": []}))
        code, _, err = await run("models", "--local", "--config", str(bad), "ls")
        assert 2 == code and "Traceback" not in err
        assert f"invalid configuration in {bad}" in err
        cfg = config_file(tmp_path)
        (tmp_path / "catalog").mkdir()
        (tmp_path / "catalog" / "models.json").write_bytes(b'{"version": 1, "models": [{"id"')
        code, _, err = await run("models", "--local", "--config", str(cfg), "ls")
        assert 1 == code and "Traceback" not in err
        assert "models.json cannot be read" in err and "hint:" in err

    async def test_help_asks_no_server(self) -> None:
        """`llorch models ls --help` prints the help alone: it does not probe the server."""
        code, out, err = await run("models", "--url", "http://127.0.0.1:9", "ls", "--help")
        assert (0, "") == (code, err)
        assert "List the catalog" in out


class TestModelsCliAgainstServer:
    async def test_pull_and_ls_through_the_server(self, tmp_path: Path) -> None:
        """With a server running, pull and ls go through its catalog API."""
        model = tiny_llama_gguf(tmp_path / "m.gguf")
        config = config_of(catalog={"root": str(tmp_path / "served")})
        async with running_server(config) as srv:
            code, out, err = await run("models", "--url", srv.url, "pull", f"file:{model}")
            assert 0 == code, err
            code, out, _ = await run("models", "--url", srv.url, "ls")
            assert 0 == code and f"file:{model}" in out
        assert (tmp_path / "served" / "models.json").exists()


def test_progress_line() -> None:
    """The progress line shows the bar, MiB done/total, rate and ETA."""
    line = render_progress(
        {"bytes_done": 1048576, "bytes_total": 4194304, "rate_bytes_per_s": 2097152, "eta_s": 1.5}
    )
    assert "1.0/4.0 MiB" in line and "2.0 MiB/s" in line and "ETA 2s" in line
    assert line.startswith("[" + "#" * 7 + "-")


class TestSharedCatalog:
    async def test_rm_on_disk_refuses_a_model_a_running_server_serves(self, tmp_path: Path) -> None:
        """`llorch models --local rm` (or a second server on the same catalog.root) removed
        the entry of a model a running server's pool serves: that pool turned Unready, and a
        catalog-owned model lost its files under the running engine. The server holds a
        shared lock on each model its pools serve; a delete elsewhere is refused naming it."""
        model = tiny_llama_gguf(tmp_path / "m.gguf")
        cfg = config_file(tmp_path)
        body = yaml.safe_load(cfg.read_text())
        body["pools"] = [mock_pool(model=f"file:{model}")]
        cfg.write_text(yaml.safe_dump(body))
        local = ["models", "--local", "--config", str(cfg)]
        config = config_of(*body["pools"], catalog=body["catalog"])
        async with running_server(config) as server:
            await wait_health(server, "p0", lambda h: h["ready"])
            code, _, err = await run(*local, "rm", f"file:{model}")
            assert 1 == code
            assert "in use by another llama-orch process" in err
            listed = (await server.client.get("/v1/catalog/models")).json()["models"]
            assert [f"file:{model}"] == [m["id"] for m in listed]
        # Once no server serves it, it goes.
        assert 0 == (await run(*local, "rm", f"file:{model}"))[0]
