"""How the browser tests launch Debian's chromium through Playwright (never its own browsers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NEEDS_CHROMIUM = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed (make test installs the Debian package)",
)
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Browser waits are generous: this machine's CPUs are shared, and nothing here measures speed.
WAIT_MS = 30_000
