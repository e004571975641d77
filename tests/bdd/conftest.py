"""BDD over HTTP: the step registry and the scenario's world.

Step definitions live in ``steps_*.py`` and are star-imported here so that every feature sees
them. pytest-bdd fails a scenario whose step has no definition; ``pytest_bdd_before_step``
below fails one whose step more than one definition would parse.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bdd.registry import refuse_ambiguous_step
from tests.bdd.steps_artifacts import *  # noqa: F403
from tests.bdd.steps_auth import *  # noqa: F403
from tests.bdd.steps_tasks import *  # noqa: F403
from tests.bdd.world import World, world


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path) as w:
        yield w


def pytest_bdd_before_step(
    request: pytest.FixtureRequest, feature: Any, scenario: Any, step: Any, step_func: Any
) -> None:
    refuse_ambiguous_step(request, step)
