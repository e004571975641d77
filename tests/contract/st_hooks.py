"""Schemathesis hooks for provider verification (loaded through ``SCHEMATHESIS_HOOKS``).

Generated task requests name random engines and models; the server under test serves one mock
model, so nearly every generated task would stop at "no pool serves this model" (a documented
503) and never reach the queue, the stream or cancel. Where a generated body names an engine and a
model as strings, they are pointed at the served pair; schemathesis revalidates the edited case,
so a request that was invalid for another reason stays a negative case.
"""

from __future__ import annotations

from typing import Any

import schemathesis

SERVED = {"engine": "mock", "model_ref": "m0"}


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.operation.path != "/v1/tasks" or not isinstance(case.body, dict):
        return
    if all(isinstance(case.body.get(key), str) for key in SERVED):
        case.body.update(SERVED)
