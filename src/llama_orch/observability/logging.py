"""Log setup: JSON Lines by default, pretty console on request; redaction at the sink.

``configure_logging`` may be called again (tests, CLI) and ``reset_logging`` undoes it. Records
of the standard library (uvicorn's start-up and error lines) are routed through the same
processors, so they are JSON Lines too and pass the same redaction.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import orjson
import structlog

from llama_orch.observability.redaction import REDACTED, Redactor, is_secret_key

LogFormat = Literal["json", "pretty"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
#: Marks the root handler this module installed, so a reset removes only that one.
_HANDLER_MARK = "_llama_orch_handler"
#: Libraries that log a line per HTTP request at INFO (every engine probe, every token stream);
#: their warnings still come through.
_CHATTY = ("httpx", "httpcore", "hpack")


#: The longest narration sentence written; a longer one (quoting an engine's error, say) is cut
#: at the sink.
HUMAN_MAX = 300

#: Fields whose values this process writes itself, never from input: not scanned at the sink.
#: (``event`` is not among them: for standard-library records it is the formatted message.)
_OWN_FIELDS = frozenset({"timestamp", "level", "logger", "actor", "action"})


class _RedactAtSink:
    """The last processor before rendering: no secret gets past it."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def __call__(
        self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        redactor = self.redactor
        own = _OWN_FIELDS
        # Plain string fields (and lists of strings) are screened together: one check of
        # their joined text clears them all in the common case; a hit redacts field by field.
        plain: list[str] = []
        texts: list[str] = []
        for key, value in event_dict.items():
            if key in own:
                continue
            if type(value) is str:
                if value and is_secret_key(key):
                    event_dict[key] = REDACTED
                else:
                    plain.append(key)
                    texts.append(value)
            elif type(value) in (list, tuple) and not is_secret_key(key):
                if all(type(item) is str for item in value):
                    plain.append(key)
                    texts.extend(value)
                else:
                    event_dict[key] = redactor.value(value, key)
            elif isinstance(value, dict | list | tuple):
                event_dict[key] = redactor.value(value, key)
        if texts and not redactor.is_clean("\n".join(texts)):
            for key in plain:
                event_dict[key] = redactor.value(event_dict[key], key)
        # Cut here, after the redaction: a sentence cut before it could end inside a secret,
        # and the part left matches neither the secret's value nor its shape.
        human = event_dict.get("human")
        if type(human) is str and len(human) > HUMAN_MAX:
            event_dict["human"] = human[:HUMAN_MAX]
        return event_dict


#: Fields the pretty line leaves out: the sentence already says them.
_PRETTY_DROPS = ("action", "target")


def _human_first(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Pretty mode: the time of day, the actor in the logger column, the narration sentence,
    then the other fields."""
    human = event_dict.pop("human", None)
    if human:
        event_dict["event"] = human
        for key in _PRETTY_DROPS:
            event_dict.pop(key, None)
    actor = event_dict.pop("actor", None)
    if actor:
        event_dict["logger_name"] = actor
    stamp = event_dict.get("timestamp")
    if isinstance(stamp, str) and len(stamp) >= 19:
        event_dict["timestamp"] = stamp[11:19]
    return event_dict


#: The one field whose line breaks are the server's own: a formatted traceback.
_MULTILINE = frozenset({"exception"})


def printable(value: str, keep: str = "") -> str:
    """``value`` with every unprintable character written as its Python escape (``\\n``,
    ``\\x1b``, ``\\x9b``, ``\\u2028``), except those in ``keep``: text from outside (a
    client, an engine) fit to show a person at a terminal."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in value)


def _one_line(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Pretty mode: text a client chose (a percent-decoded path, a model name) may hold line
    breaks, carriage returns and terminal escape sequences. Written as they are, they would
    forge log lines or drive the terminal of the person reading them, so they are shown
    escaped (bidirectional overrides too: they are not printable). JSON Lines need no such step:
    ``_json_dumps`` escapes them; values other than strings are rendered with ``repr``, which
    escapes them too."""
    for key, value in event_dict.items():
        if type(value) is str and not value.isprintable():
            event_dict[key] = printable(value, "\n" if key in _MULTILINE else "")
    return event_dict


def choose_log_format(configured: str, *, explicit: bool, tty: bool) -> LogFormat:
    """What ``llorch serve`` writes: the configured format when LOG_FORMAT, the flag or the file
    asked for one; otherwise pretty for a person at a terminal and JSON Lines everywhere else."""
    if explicit:
        return "pretty" if configured == "pretty" else "json"
    return "pretty" if tty else "json"


#: The UTF-8 encodings of characters orjson writes raw but a reader must not get raw: C1
#: controls (U+0080-U+009F, ``c2 80``-``c2 9f``; U+009B is CSI, a terminal escape on its own),
#: the bidirectional marks, embeddings, overrides and isolates (U+061C, U+200E-U+200F,
#: U+202A-U+202E, U+2066-U+2069), which reorder what a person reads, and the line and paragraph
#: separators (U+2028-U+2029), which some readers take for line breaks. Each is a whole
#: character: lead bytes ``c2``, ``d8`` and ``e2`` never occur inside another character.
_UNSAFE_UTF8 = re.compile(
    rb"\xc2[\x80-\x9f]|\xd8\x9c|\xe2\x80[\x8e\x8f\xa8-\xae]|\xe2\x81[\xa6-\xa9]"
)


def _json_escape(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match.group().decode())


def _json_dumps(obj: Any, **_kw: Any) -> str:
    """One JSON line. orjson escapes C0 controls only; the characters above can occur only
    inside strings, where their ``\\uXXXX`` escape decodes to the same text. The common line
    is ASCII, cleared by ``isascii`` (a tenth of the search's cost); others get one search."""
    line = orjson.dumps(obj, default=str)
    if not line.isascii() and _UNSAFE_UTF8.search(line) is not None:
        line = _UNSAFE_UTF8.sub(_json_escape, line)
    return line.decode()


def configure_logging(
    fmt: LogFormat = "json",
    level: str = "info",
    *,
    redactor: Redactor | None = None,
    stream: TextIO | None = None,
    colors: bool | None = None,
) -> None:
    """Configure structlog, and the standard library's root logger, for the whole process.

    Pretty lines are coloured when ``colors`` says so, by default when the stream is a terminal.
    """
    out = stream or sys.stderr
    renderer: Any
    if fmt == "pretty":
        if colors is None:
            colors = out.isatty()
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    sink = _RedactAtSink(redactor or Redactor())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    final: list[Any] = [sink, *([_human_first, _one_line] if fmt == "pretty" else []), renderer]
    numeric_level = _LEVELS.get(level, logging.INFO)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, *final],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # One write per line: ``print`` writes the newline separately, which on the unbuffered
        # stderr is a second system call for every line.
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                *final,
            ],
        )
    )
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    _remove_our_handlers(root)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(numeric_level, logging.WARNING))


def _remove_our_handlers(root: logging.Logger) -> None:
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)


def reset_logging() -> None:
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    _remove_our_handlers(root)
    root.setLevel(logging.WARNING)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET)
