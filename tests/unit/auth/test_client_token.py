"""Which token the CLI sends: --token-file, else LLORCH_TOKEN, else LLORCH_TOKEN_FILE."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from llama_orch.cli.main import client_token


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    flag, env = tmp_path / "flag", tmp_path / "env"
    flag.write_text("from-flag\n")
    env.write_text("from-env-file\n")
    return str(flag), str(env)


class TestClientToken:
    def test_precedence(self, files: tuple[str, str]) -> None:
        """The flag beats LLORCH_TOKEN, which beats LLORCH_TOKEN_FILE; nothing means no header."""
        flag, env_file = files
        environ = {"LLORCH_TOKEN": "from-env", "LLORCH_TOKEN_FILE": env_file}
        assert ["from-flag", "from-env", "from-env-file", None] == [
            client_token(flag, environ),
            client_token(None, environ),
            client_token(None, {"LLORCH_TOKEN_FILE": env_file}),
            client_token(None, {}),
        ]

    def test_unreadable_file_is_a_usage_error(self, tmp_path: Path) -> None:
        """A missing or empty token file stops the CLI with a message, not a traceback."""
        empty = tmp_path / "empty"
        empty.write_text("\n")
        for path in (str(tmp_path / "missing"), str(empty)):
            with pytest.raises(click.UsageError):
                client_token(path, {})
