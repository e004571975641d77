"""Sessions and budgets against ``llorch serve`` as careless clients use them: one session on
pools with different budgets, its turns and budgets raced, deleted and spent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults._raw import serve_config
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import mock_pool, task_body

#: sessions.max_turns by default.
MAX_TURNS = 8
SMALL = 30
LARGE = 100
CHAT = [{"role": "user", "content": "hi"}]


def _serving(workdir: Path, *pools: dict[str, Any]) -> Iterator[ServeProcess]:
    config: dict[str, Any] = serve_config(pools[0], artifacts_dir=str(workdir / "artifacts"))
    config["pools"].extend(pools[1:])
    with serve_process(config, workdir) as served:
        yield served
    log = served.log_path.read_text(encoding="utf-8")
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    yield from _serving(
        tmp_path_factory.mktemp("session-budgets"),
        mock_pool("small", "m-small", budgets={"tokens": SMALL}),
        mock_pool("large", "m-large", budgets={"tokens": LARGE}),
        # An engine that hangs after its first token: a task runs until it is canceled.
        mock_pool(
            "held", "m-held", slots=2, budgets={"tokens": SMALL}, mock={"hang_after_token": 1}
        ),
    )


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


@pytest.fixture(scope="module")
def shared_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """Two pools serve one model, the one placement prefers with the smaller budget."""
    yield from _serving(
        tmp_path_factory.mktemp("shared-model-budgets"),
        mock_pool("z-roomy", "m-shared", budgets={"tokens": LARGE}),
        mock_pool("a-tight", "m-shared", budgets={"tokens": SMALL}),
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": CHAT}),
        ("/api/generate", {"prompt": "hi", "stream": False}),
    ],
)
def test_a_request_without_a_length_fits_the_budget_of_the_pool_it_lands_on(
    shared_model: ServeProcess, path: str, body: dict[str, object]
) -> None:
    """A request that sets no length is cut to what the session's budget affords on the pool
    admission places it on, not on another pool serving the same model, and is never refused
    with advice to lower a length the client did not send."""
    url = f"{shared_model.url}{path}"
    answer = httpx.post(url, json={"model": "m-shared", **body}, timeout=30)
    assert 200 == answer.status_code, answer.text
    usage = answer.json().get("usage") or {"completion_tokens": answer.json()["eval_count"]}
    assert usage["completion_tokens"] <= SMALL


def test_a_budget_held_by_a_running_task_is_not_called_spent(server: ServeProcess) -> None:
    """While a task of the session holds the rest of the budget, another task is refused with
    what is true: the budget is reserved until that task ends, not spent for good."""
    session = {"X-Session-Id": str(uuid.uuid4())}
    body = {"model": "m-held", "messages": CHAT, "stream": True}
    with httpx.Client(base_url=server.url, timeout=30, headers=session) as client:
        # No length: the task reserves all the session's budget on the pool.
        with client.stream("POST", "/v1/chat/completions", json=body) as holder:
            assert 200 == holder.status_code
            # Admitted once answered 200; reading on (and keeping the reader) keeps it running.
            lines = holder.iter_lines()
            assert next(lines).startswith("data: ")
            second = client.post("/v1/chat/completions", json={**body, "stream": False})
        assert 429 == second.status_code, second.text
    message = second.json()["error"]["message"]
    assert "spent" not in message
    assert f"{SMALL} tokens reserved" in message


def test_requests_racing_for_the_last_turns_get_exactly_the_turns_left(
    server: ServeProcess,
) -> None:
    """Requests of one session sent at once are admitted one by one: exactly the turn limit
    (sessions.max_turns, 8 by default) are answered, each other one is refused with 429."""
    session = {"X-Session-Id": str(uuid.uuid4())}
    body = {"model": "m-large", "prompt": "hi", "stream": False, "options": {"num_predict": 1}}

    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=session) as client:
            answers = await asyncio.gather(
                *(client.post("/api/generate", json=body) for _ in range(MAX_TURNS + 3))
            )
        return sorted(a.status_code for a in answers)

    assert [200] * MAX_TURNS + [429] * 3 == asyncio.run(race())


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 10, "stop": [" "]}),
        (
            "/api/generate",
            {"prompt": "hi", "stream": False, "options": {"num_predict": 10, "stop": [" "]}},
        ),
    ],
)
def test_a_buffered_answer_reports_the_budget_left_after_its_task(
    server: ServeProcess, path: str, body: dict[str, object]
) -> None:
    """An answer sent whole is sent after its task ended: X-Budget-Tokens-Remaining counts what
    the task used (it stops at the first space), not the length admission reserved for it."""
    session = {"X-Session-Id": str(uuid.uuid4())}
    answer = httpx.post(
        f"{server.url}{path}", json={"model": "m-small", **body}, headers=session, timeout=30
    )
    assert 200 == answer.status_code, answer.text
    used = answer.json().get("usage", {}).get("completion_tokens") or answer.json()["eval_count"]
    assert used < 10
    assert str(SMALL - used) == answer.headers["X-Budget-Tokens-Remaining"]


def test_a_waited_task_reports_the_budget_left_after_it(server: ServeProcess) -> None:
    """``POST /v1/tasks`` with ``Prefer: wait`` answers once the task ended: its budget header
    counts what the task used, as the buffered front-door answers do."""
    body = task_body("m-small", max_tokens=10, sampling={"stop": [" "]})
    answer = httpx.post(f"{server.url}/v1/tasks", json=body, headers={"Prefer": "wait"}, timeout=30)
    assert 200 == answer.status_code, answer.text
    used = answer.json()["tokens_out"]
    assert used < 10
    assert str(SMALL - used) == answer.headers["X-Budget-Tokens-Remaining"]


def test_a_pool_with_an_unlimited_budget_is_free_of_the_servers(tmp_path: Path) -> None:
    """``unlimited`` in a pool switches off a budget the server sets for every other pool;
    null would inherit it."""
    config: dict[str, Any] = serve_config(
        mock_pool("free", "m-free", budgets={"tokens": "unlimited"}),
        artifacts_dir=str(tmp_path / "artifacts"),
    )
    config["pools"].append(mock_pool("capped", "m-capped", budgets={"tokens": None}))
    config["budgets"] = {"tokens": SMALL}
    session = str(uuid.uuid4())
    with (
        serve_process(config, tmp_path) as served,
        httpx.Client(base_url=served.url, timeout=30) as client,
    ):
        free = [_chat(client, session, "m-free", LARGE) for _ in range(2)]
        capped = _chat(client, str(uuid.uuid4()), "m-capped", LARGE)
    for answer in free:
        assert 200 == answer.status_code, answer.text
        assert "x-budget-tokens-remaining" not in answer.headers
    assert 429 == capped.status_code, capped.text
    assert f"{SMALL} tokens left" in capped.json()["error"]["message"]
