"""`llorch node head` / `node join` refuse what the config could never name or trust, before
any `ray start` (dry runs: no cluster is started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_orch.cli.node import default_host_name
from tests.e2e.test_cli import run


def _token(tmp_path: Path) -> str:
    token = tmp_path / "cluster.token"
    token.write_text("t" * 43 + "\n")
    token.chmod(0o600)
    return str(token)


class TestHostName:
    @pytest.mark.parametrize("name", ["ws2.lan", "gpu box", "-ws2", "ws2/b", "x" * 65])
    async def test_a_name_no_config_can_declare_is_refused(self, tmp_path: Path, name: str) -> None:
        """A host joined as `ws2.lan` offers `llorch_host_ws2.lan`, which no pool's `host:` can
        name (config allows letters, digits, `-` and `_`): its pools would wait forever."""
        code, out, err = await run(
            "node", "head", "--name", name, "--gpus", "1", "--token-file", _token(tmp_path),
            "--dry-run",
        )  # fmt: skip
        assert 2 == code, out
        assert "Invalid value for '--name'" in err and "letters, digits" in err
        assert "ray" not in out

    async def test_a_valid_name_is_the_hosts_resource(self, tmp_path: Path) -> None:
        code, out, err = await run(
            "node", "head", "--name", "ws_2-b", "--gpus", "1", "--token-file", _token(tmp_path),
            "--dry-run",
        )  # fmt: skip
        assert 0 == code, err
        assert '"llorch_host_ws_2-b":1.0' in out

    @pytest.mark.parametrize(
        ("nodename", "name"),
        [("ws2", "ws2"), ("ws2.lan", "ws2"), ("gpu-b.example.com", "gpu-b"), ("ws 2", None)],
    )
    def test_the_default_name_is_the_short_hostname(self, nodename: str, name: str | None) -> None:
        """A fully qualified hostname joins under its first label, as config names it."""
        assert name == default_host_name(nodename)
