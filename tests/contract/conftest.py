from __future__ import annotations

import pytest

#: Lines the provider verification reports at the end of the run (its request count).
SUMMARY = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(SUMMARY, [])
    if lines:
        terminalreporter.write_sep("-", "provider verification")
        for line in lines:
            terminalreporter.write_line(line)
