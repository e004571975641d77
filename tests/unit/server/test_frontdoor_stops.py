"""The front doors answer every server stop that dispatch knows retriably, and only those."""

from __future__ import annotations

import pytest

from llama_orch.dispatch.service import SERVER_STOPS
from llama_orch.errors import ErrorKind
from llama_orch.server.frontdoor._tasks import Failed, stopped_by_server


@pytest.mark.parametrize("reason", sorted(SERVER_STOPS))
def test_every_server_stop_of_dispatch_is_a_retriable_failure(reason: str) -> None:
    failed = stopped_by_server(reason)
    assert isinstance(failed, Failed)
    assert ErrorKind.POOL_UNAVAILABLE is failed.kind
    assert failed.retry_after_ms
    assert SERVER_STOPS[reason] in failed.message


@pytest.mark.parametrize("reason", [None, "", "client", "disconnect", "stall"])
def test_a_callers_cancel_is_no_failure(reason: str | None) -> None:
    assert stopped_by_server(reason) is None
