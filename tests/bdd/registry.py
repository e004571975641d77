"""The step registry's rule beyond pytest-bdd's own: one step text, one definition."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_bdd.scenario import find_fixturedefs_for_step
from pytest_bdd.steps import step_function_context_registry


def refuse_ambiguous_step(request: pytest.FixtureRequest, step: Any) -> None:
    """Fail the scenario when more than one step definition would parse ``step``."""
    manager = request._fixturemanager
    defs = find_fixturedefs_for_step(step, manager, request.node)
    matches = {step_function_context_registry[d.func].step_func for d in defs}
    if len(matches) > 1:
        names = sorted(f.__name__ for f in matches)
        pytest.fail(f"ambiguous step {step.keyword} {step.name!r}: {names}", pytrace=False)
