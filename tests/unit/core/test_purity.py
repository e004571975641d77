"""core is pure: no I/O, no clock, no threads, no asyncio, nothing from above it (ORCH-3252)."""

from __future__ import annotations

import ast
from pathlib import Path

import llama_orch.core

CORE = Path(llama_orch.core.__file__).parent
FORBIDDEN = {
    "asyncio",
    "time",
    "os",
    "subprocess",
    "threading",
    "multiprocessing",
    "socket",
    "datetime",
    "random",
}
#: Layers above core (and its sibling, contracts) that it must never import.
ABOVE = (
    "llama_orch.contracts",
    "llama_orch.observability",
    "llama_orch.adapters",
    "llama_orch.pool",
    "llama_orch.dispatch",
    "llama_orch.auth",
    "llama_orch.server",
    "llama_orch.bootstrap",
    "llama_orch.cli",
    "llama_orch.config",
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


class TestCoreImports:
    def test_core_has_modules(self) -> None:
        """The scan below looks at real files (a guard against scanning an empty folder)."""
        assert {"placement.py", "queue.py", "model.py"} <= {p.name for p in CORE.glob("*.py")}

    def test_no_io_clock_or_thread_imports(self) -> None:
        """No core module imports asyncio, time, os, subprocess, threading or the like."""
        offenders = {
            f"{path.name}: {name}"
            for path in CORE.glob("*.py")
            for name in imported_modules(path)
            if name.split(".")[0] in FORBIDDEN
        }
        assert set() == offenders

    def test_nothing_from_above(self) -> None:
        """Core imports only itself, vocab and the standard library."""
        offenders = {
            f"{path.name}: {name}"
            for path in CORE.glob("*.py")
            for name in imported_modules(path)
            if name.startswith(ABOVE)
        }
        assert set() == offenders
