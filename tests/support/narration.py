"""Narration capture for tests (ORCH-3306), and the coverage figure of D-OBS-02.

``NarrationLog`` wraps ``structlog.testing.capture_logs`` entries with lookups by action.
``COVERAGE`` counts, over the whole test run, the key events (structlog events at info or above,
or naming an ``actor``) and how many carried a ``human`` sentence; ``tests/conftest.py`` prints
it at the end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

#: D-OBS-02: the gate starts at 80%, informational at first.
COVERAGE_GATE = 0.80


#: Levels at which an event is a key event; debug lines are diagnostics, not narration.
_KEY_LEVELS = frozenset({"info", "warning", "warn", "error", "critical", "exception"})


@dataclass
class NarrationCoverage:
    """Key events are structlog events at info or above, and any event naming an ``actor``."""

    key_events: int = 0
    narrated: int = 0
    missing: Counter[str] = field(default_factory=Counter)

    def observe(self, event: MutableMapping[str, Any], level: str | None = None) -> None:
        level = level or str(event.get("log_level", event.get("level", "info")))
        if "actor" not in event and level not in _KEY_LEVELS:
            return
        self.key_events += 1
        if event.get("human"):
            self.narrated += 1
        else:
            name = event.get("action", event.get("event"))
            self.missing[f"{event.get('actor', '?')}/{name}"] += 1

    def observe_all(self, events: Iterable[MutableMapping[str, Any]]) -> None:
        for event in events:
            self.observe(event)

    def __call__(
        self, _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """As a structlog processor: count, then pass the event on."""
        self.observe(event, method)
        return event

    def state(self) -> dict[str, Any]:
        """What a parallel test worker sends to the controller (plain JSON-like values)."""
        return {
            "key_events": self.key_events,
            "narrated": self.narrated,
            "missing": dict(self.missing),
        }

    def merge(self, state: Mapping[str, Any]) -> None:
        self.key_events += int(state["key_events"])
        self.narrated += int(state["narrated"])
        self.missing.update(state["missing"])

    @property
    def ratio(self) -> float:
        return self.narrated / self.key_events if self.key_events else 1.0

    def summary(self) -> str:
        line = (
            f"narration coverage: {self.ratio:.1%} of {self.key_events} key events carried "
            f"`human` (gate {COVERAGE_GATE:.0%}, informational)"
        )
        if self.missing:
            worst = ", ".join(f"{name} x{n}" for name, n in self.missing.most_common(5))
            line += f"; without human: {worst}"
        return line


COVERAGE = NarrationCoverage()


class NarrationLog:
    """Captured log events, with lookups that read like the assertions tests make."""

    def __init__(self, entries: list[MutableMapping[str, Any]]) -> None:
        self.entries = entries

    def events(self, action: str | None = None, **fields: Any) -> list[MutableMapping[str, Any]]:
        """Key events with this action whose fields equal ``fields``."""
        return [
            e
            for e in self.entries
            if "actor" in e
            and (action is None or e.get("action") == action)
            and all(e.get(k) == v for k, v in fields.items())
        ]

    def one(self, action: str, **fields: Any) -> MutableMapping[str, Any]:
        found = self.events(action, **fields)
        assert 1 == len(found), f"expected one {action!r} event with {fields}, got {found}"
        return found[0]

    def humans(self, action: str | None = None) -> list[str]:
        return [str(e["human"]) for e in self.events(action) if e.get("human")]
