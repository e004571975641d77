"""Sessions and budgets against ``llorch serve`` as careless clients use them: one session on
pools with different budgets, its turns and budgets raced, deleted and spent."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.faults._raw import serve_config
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import mock_pool

SMALL = 30
LARGE = 100
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("session-budgets")
    small = mock_pool("small", "m-small", budgets={"tokens": SMALL})
    large = mock_pool("large", "m-large", budgets={"tokens": LARGE})
    config: dict[str, Any] = serve_config(small, artifacts_dir=str(workdir / "artifacts"))
    config["pools"].append(large)
    with serve_process(config, workdir) as served:
        yield served
    log = served.log_path.read_text(encoding="utf-8")
    assert "Traceback" not in log


def _chat(client: httpx.Client, session: str, model: str, max_tokens: int) -> httpx.Response:
    body = {"model": model, "messages": CHAT, "max_tokens": max_tokens}
    return client.post("/v1/chat/completions", json=body, headers={"X-Session-Id": session})


def test_a_session_on_a_second_pool_is_held_to_that_pools_budget(server: ServeProcess) -> None:
    """A task is governed by the budget of the pool it is admitted to, while what the session
    already spent carries over; the session reports against the pool it last ran on."""
    session = str(uuid.uuid4())
    with httpx.Client(base_url=server.url, timeout=30) as client:
        first = _chat(client, session, "m-small", 20)
        assert 200 == first.status_code, first.text
        spent = first.json()["usage"]["completion_tokens"]
        # Past the small pool's budget, well within the large one's.
        second = _chat(client, session, "m-large", SMALL)
        assert 200 == second.status_code, second.text
        spent += second.json()["usage"]["completion_tokens"]
        info = client.get(f"/v1/sessions/{session}").json()
        assert (2, LARGE - spent) == (info["turns"], info["tokens_budget_remaining"])
        # Back on the small pool, what was spent on the large one counts against its budget.
        again = _chat(client, session, "m-small", 1)
        assert 429 == again.status_code, again.text
        assert "session token budget is spent" in again.json()["error"]["message"]
        info = client.get(f"/v1/sessions/{session}").json()
        assert LARGE - spent == info["tokens_budget_remaining"]
