"""The suite-wide log scan finds what it is there to find."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_orch.observability.redaction import Redactor
from tests.support.log_scan import LogScan, secrets_of


def test_secrets_come_from_config_env_and_token_files(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token-0123456789\n")
    config = {"pools": [{"id": "p", "engine": {"api_key": "config-key-0123456789"}}]}
    env = {"AUTH_TOKEN_FILE": str(token_file), "GOOD_KEY": "env-key-0123456789", "HOME": "/root"}
    assert {"config-key-0123456789", "file-token-0123456789", "env-key-0123456789"} == set(
        secrets_of(config, env)
    )


@pytest.mark.parametrize(
    "line",
    [
        '{"event": "task admitted", "prompt": "my-configured-secret-42"}',
        '{"event": "probe failed", "detail": "Authorization: Bearer abcdefgh12345678"}',
        '{"event": "fetch", "url": "https://user:hunter22@example.com/x"}',
    ],
)
def test_a_leaking_line_fails(line: str) -> None:
    scan = LogScan()
    with pytest.raises(AssertionError, match="a secret reached the log"):
        scan.check("server.log", ['{"event": "ok"}', line], ("my-configured-secret-42",))
    assert 1 == len(scan.leaks) and scan.leaks[0].startswith("server.log:2:")


def test_a_redacted_line_passes() -> None:
    secret = "my-configured-secret-42"
    redacted = Redactor((secret,)).text(f"Authorization: Bearer {secret} key={secret}")
    scan = LogScan()
    scan.check("server.log", [redacted, '{"event": "task admitted"}'], (secret,))
    assert (2, []) == (scan.lines, scan.leaks)
