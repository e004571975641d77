"""The step registry refuses unknown and ambiguous steps (a throwaway project, run by pytest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFTEST = """
from pytest_bdd import given, parsers

from tests.bdd.registry import refuse_ambiguous_step


def pytest_bdd_before_step(request, feature, scenario, step, step_func):
    refuse_ambiguous_step(request, step)


@given(parsers.parse("a thing called {name}"))
def by_name(name):
    pass


@given("a thing called x")
def by_text():
    pass
"""
FEATURE = """Feature: registry
  Scenario: ambiguous
    Given a thing called x

  Scenario: unknown
    Given something nobody defined

  Scenario: fine
    Given a thing called y
"""


def test_unknown_and_ambiguous_steps_fail(tmp_path: Path) -> None:
    """Only the scenario whose step has exactly one definition passes."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "registry.feature").write_text(FEATURE)
    (tmp_path / "test_registry.py").write_text('from pytest_bdd import scenarios\nscenarios(".")\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "2 failed, 1 passed" in output, output
    assert "ambiguous step Given 'a thing called x': ['by_name', 'by_text']" in output
    assert "StepDefinitionNotFoundError" in output or "not found" in output
