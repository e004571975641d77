"""A secret scan over the log of every server the suite starts.

Each ``llorch serve`` subprocess (and each in-process server given a log stream) hands its log
here when it stops. A line leaks when it holds a secret the server was configured with (from the
config, the environment, or a token file the environment names), or when the sink's own
redaction would still change it: a redacted line is a fixed point of redaction. A leak fails
the test that started the server; the terminal summary says how much was scanned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_orch.observability.redaction import Redactor, is_secret_key

#: Environment variables whose values are secrets (or, ending in ``_FILE``, name a file that is).
_SECRET_ENV = re.compile(r"(?i)(TOKEN|KEY|SECRET|PASSWORD)(_FILE)?$")


def secrets_of(config: Any, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The secret values a server started on ``config`` and ``environ`` knows."""
    found: list[str] = []
    _walk(config, found)
    for name, value in (environ or {}).items():
        match = _SECRET_ENV.search(name)
        if not match or not value:
            continue
        if match.group(2):
            path = Path(value)
            if path.is_file():
                found.append(path.read_text(encoding="utf-8").strip())
        else:
            found.append(value)
    return tuple(s for s in found if len(s) >= 8)


def _walk(node: Any, found: list[str]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(value, str) and is_secret_key(str(key)):
                found.append(value)
            else:
                _walk(value, found)
    elif isinstance(node, list | tuple):
        for item in node:
            _walk(item, found)


@dataclass
class LogScan:
    logs: int = 0
    lines: int = 0
    leaks: list[str] = field(default_factory=list)

    def check(self, source: str, lines: Iterable[str], secrets: tuple[str, ...]) -> None:
        """Scan ``lines``; raise ``AssertionError`` naming every leaking line."""
        redactor = Redactor(secrets)
        found: list[str] = []
        self.logs += 1
        for number, line in enumerate(lines, 1):
            self.lines += 1
            if redactor.text(line) != line:
                found.append(f"{source}:{number}: {line[:300]}")
        if found:
            self.leaks.extend(found)
            raise AssertionError("a secret reached the log:\n" + "\n".join(found[:10]))

    def check_file(self, path: Path, secrets: tuple[str, ...]) -> None:
        text = path.read_text(encoding="utf-8", errors="replace")
        self.check(str(path), text.splitlines(), secrets)

    def state(self) -> dict[str, Any]:
        """What a parallel test worker sends to the controller (plain JSON-like values)."""
        return {"logs": self.logs, "lines": self.lines, "leaks": list(self.leaks)}

    def merge(self, state: Mapping[str, Any]) -> None:
        self.logs += int(state["logs"])
        self.lines += int(state["lines"])
        self.leaks.extend(state["leaks"])

    def summary(self) -> str:
        return (
            f"log secret scan: {self.lines} lines from {self.logs} server logs, "
            f"{len(self.leaks)} leaking"
        )


LOG_SCAN = LogScan()
