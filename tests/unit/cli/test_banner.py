"""The start banner of ``llorch serve`` at a terminal."""

from __future__ import annotations

from llama_orch.cli.banner import command_name, console_url, start_banner
from llama_orch.config import load_settings
from tests.support.server import config_of


class TestBanner:
    def test_names_the_console_and_two_commands(self) -> None:
        """The banner gives the console URL and the status and submit commands to try."""
        settings = load_settings({}, config=config_of(), bind_override="127.0.0.1:8080")
        text = start_banner(settings, version="1.2.3", simulated=True, command=".venv/bin/llorch")
        assert [
            "  llama-orch 1.2.3 · 1 pool · simulated GPUs, no real inference",
            "  Console  http://127.0.0.1:8080/",
            "  Try      .venv/bin/llorch status --watch",
            '           .venv/bin/llorch submit "Write a haiku about GPUs"',
        ] == text.strip("\n").splitlines()

    def test_other_address_sets_llorch_url(self) -> None:
        """On another port the commands carry LLORCH_URL; a wildcard bind shows loopback."""
        settings = load_settings(
            {"AUTH_TOKEN": "x" * 32}, config=config_of(), bind_override="0.0.0.0:9000"
        )
        assert "http://127.0.0.1:9000/" == console_url(settings)
        text = start_banner(settings, version="1", simulated=False)
        assert "LLORCH_URL=http://127.0.0.1:9000 llorch status --watch" in text
        assert "bearer token required" in text and "simulated" not in text

    def test_command_name(self) -> None:
        """The banner repeats the path the server was started with when it is a relative one."""
        assert ".venv/bin/llorch" == command_name(".venv/bin/llorch")
        assert "llorch" == command_name("/usr/lib/python3/site-packages/llama_orch/__main__.py")
        assert "llorch" == command_name("/elsewhere/bin/llorch")
