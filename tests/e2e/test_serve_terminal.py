"""``llorch serve`` at a terminal (a real pseudo-terminal): banner and pretty logs, unless
LOG_FORMAT says otherwise."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from tests.support.serve_process import free_port, stop

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def serve_on_a_terminal(tmp_path: Path, environ: dict[str, str]) -> Iterator[tuple[int, str]]:
    config = yaml.safe_load((ROOT / "examples/demo.yaml").read_text())
    path = tmp_path / "llorch.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "LOG_"))}
    command = [sys.executable, "-m", "llama_orch", "serve", "--config", str(path)]
    command += ["--bind", f"127.0.0.1:{port}"]
    main, child = pty.openpty()
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
        env={**env, **environ},
    )
    os.close(child)
    try:
        yield main, f"http://127.0.0.1:{port}/"
    finally:
        stop(process)
        os.close(main)


def read_until(fd: int, marker: str, timeout_s: float = 30.0) -> str:
    """What the terminal shows (colours stripped) up to and including ``marker``."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
            text = ANSI.sub("", seen.decode(errors="replace"))
            if marker in text:
                return text
    raise AssertionError(f"never saw {marker!r} in {seen[-2000:]!r}")


class TestServeAtATerminal:
    def test_banner_and_pretty_logs(self, tmp_path: Path) -> None:
        """At a terminal the server prints people-readable lines and a banner with the URL."""
        with serve_on_a_terminal(tmp_path, {}) as (fd, url):
            text = read_until(fd, "turns ready")
        assert f"Console  {url}" in text
        assert "status --watch" in text and "submit" in text
        assert re.search(r"^\d\d:\d\d:\d\d \[info\s*\] Serves 2 pools on ", text, re.M)
        assert '{"actor"' not in text

    def test_log_format_json_wins(self, tmp_path: Path) -> None:
        """LOG_FORMAT=json keeps JSON Lines at a terminal, and no banner."""
        with serve_on_a_terminal(tmp_path, {"LOG_FORMAT": "json"}) as (fd, _):
            text = read_until(fd, "turns ready")
        assert "Console  " not in text
        assert all(line.startswith("{") for line in text.strip().splitlines())
