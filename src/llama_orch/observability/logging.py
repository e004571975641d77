"""Log setup: JSON Lines by default, pretty console on request; redaction at the sink.

``configure_logging`` may be called again (tests, CLI) and ``reset_logging`` undoes it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import orjson
import structlog

from llama_orch.observability.redaction import Redactor

LogFormat = Literal["json", "pretty"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _RedactAtSink:
    """The last processor before rendering: no secret gets past it."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def __call__(
        self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        redact = self.redactor.value
        for key, value in event_dict.items():
            if isinstance(value, str | dict | list | tuple):
                event_dict[key] = redact(value, key)
        return event_dict


def _json_dumps(obj: Any, **_kw: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(
    fmt: LogFormat = "json",
    level: str = "info",
    *,
    redactor: Redactor | None = None,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for the whole process."""
    renderer: Any
    if fmt == "pretty":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _RedactAtSink(redactor or Redactor()),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
