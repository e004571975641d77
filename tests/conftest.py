from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from llama_orch.observability.logging import reset_logging


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Global log setup is reset around every test (structlog's own discipline)."""
    reset_logging()
    yield
    reset_logging()


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, object]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs
