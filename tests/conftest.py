from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from llama_orch.observability.logging import reset_logging
from tests.support.log_scan import LOG_SCAN
from tests.support.narration import COVERAGE, COVERAGE_GATE, NarrationLog


def _count_narration() -> None:
    """structlog's defaults, plus the coverage counter and the request context."""
    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, COVERAGE, *processors])


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Global log setup is reset around every test (structlog's own discipline)."""
    reset_logging()
    _count_narration()
    yield
    reset_logging()


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, object]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs
    COVERAGE.observe_all(logs)


@pytest.fixture
def narration() -> Iterator[NarrationLog]:
    """Every event logged during the test, with the request context merged in."""
    with structlog.testing.capture_logs([structlog.contextvars.merge_contextvars]) as logs:
        yield NarrationLog(logs)
    COVERAGE.observe_all(logs)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--real-llama",
        action="store_true",
        help="run the real llama.cpp checks (tests marked real_llama; make test-real)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The real llama.cpp checks are opt-in: they need a built llama-server (make test-real).

    The Ray cluster tests share one worker when the suite runs in parallel (`make test`): each
    starts a cluster of three Ray nodes, and two such clusters at once would fight over two
    cores for no gain. It runs first: xdist's own hook names each item's group from its marks,
    and would not see a mark added after it."""
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(pytest.mark.xdist_group("ray"))
    if config.getoption("--real-llama"):
        return
    skip = pytest.mark.skip(reason="real llama.cpp checks are opt-in: make test-real")
    for item in items:
        if "real_llama" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A parallel worker hands its tallies to the controller, which prints the summary."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["narration"] = COVERAGE.state()
        output["log_scan"] = LOG_SCAN.state()


def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller adds up what each parallel worker counted (see pytest_sessionfinish)."""
    output = getattr(node, "workeroutput", {})
    if "narration" in output:
        COVERAGE.merge(output["narration"])
    if "log_scan" in output:
        LOG_SCAN.merge(output["log_scan"])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report the share of key events that carried narration (D-OBS-02) and the log scan."""
    if LOG_SCAN.logs:
        terminalreporter.write_sep("-", "logs")
        terminalreporter.write_line(
            LOG_SCAN.summary(), **({"red": True} if LOG_SCAN.leaks else {"green": True})
        )
    if not COVERAGE.key_events:
        return
    terminalreporter.write_sep("-", "narration")
    marker = {"green": True} if COVERAGE.ratio >= COVERAGE_GATE else {"yellow": True}
    terminalreporter.write_line(COVERAGE.summary(), **marker)
