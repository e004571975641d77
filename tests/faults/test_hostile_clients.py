"""Careless and hostile clients of the task API, the listings and the OpenAI and Ollama front
doors, against ``llorch serve``: each mistake is a 4xx naming what was wrong, never a 500, and a
field the peer API says to ignore changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.faults._raw import serve_config
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import mock_pool

MAX_TURNS = 2
TOKEN_BUDGET = 30
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("hostile-clients")
    pool = mock_pool(
        "p0",
        "m0",
        slots=2,
        supported_workloads=["completion", "embedding"],
        mock={"tokens_per_s": 50.0},
    )
    config = serve_config(pool, artifacts_dir=str(workdir / "artifacts"))
    # A pool whose sessions may spend fewer tokens than a front door's default max_tokens.
    budgeted = mock_pool("p1", "m1", budgets={"tokens": TOKEN_BUDGET}, mock={"tokens_per_s": 500.0})
    config["pools"].append(budgeted)
    config["sessions"] = {"max_turns": MAX_TURNS}
    with serve_process(config, workdir) as served:
        yield served
    log = served.log_path.read_text(encoding="utf-8")
    assert "Traceback" not in log
    assert '"level":"error"' not in log


@pytest.mark.parametrize(
    "limit",
    [
        "\u00b2",  # a superscript two: str.isdigit() says yes, int() says no
        "\u0661",  # an Arabic-Indic one
        "9" * 5000,  # past Python's int-from-string digit limit
        " 5",
        "+5",
        "5.0",
    ],
)
def test_an_artifact_page_size_that_is_not_ascii_digits_is_400(
    server: ServeProcess, limit: str
) -> None:
    answer = httpx.get(f"{server.url}/v1/artifacts", params={"limit": limit}, timeout=30)
    assert (400, "INVALID_PARAMS") == (answer.status_code, answer.json()["code"])
    assert "limit must be an integer from 1 to 500" in answer.json()["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m0", "messages": CHAT, "max_tokens": 2}),
        ("/v1/completions", {"model": "m0", "prompt": "hi", "max_tokens": 2}),
        ("/v1/embeddings", {"model": "m0", "input": "hi", "encoding_format": "float"}),
    ],
)
def test_the_openai_user_field_does_not_make_a_session_that_runs_out_of_turns(
    server: ServeProcess, path: str, body: dict[str, object]
) -> None:
    """``user`` is a deprecated end-user tag that OpenAI servers ignore: applications set it on
    every request, so it must not gather them into one session whose turn limit refuses the
    user's next request."""
    answers = [
        httpx.post(f"{server.url}{path}", json={**body, "user": "alice"}, timeout=30)
        for _ in range(MAX_TURNS + 1)
    ]
    assert [200] * (MAX_TURNS + 1) == [a.status_code for a in answers], answers[-1].text


def _first_line_with(lines: Iterator[str], text: str) -> str:
    return next(line for line in lines if text in line)


@pytest.mark.parametrize(
    ("path", "body", "token", "last"),
    [
        (
            "/v1/chat/completions",
            {"model": "m0", "messages": CHAT, "max_tokens": 40, "stream": True},
            '"content":"',
            "data: [DONE]",
        ),
        (
            "/api/generate",
            {"model": "m0", "prompt": "hi", "options": {"num_predict": 40}},
            '"done":false',
            '"done":true',
        ),
    ],
)
def test_a_reader_of_a_front_door_task_leaving_does_not_cancel_it(
    server: ServeProcess, path: str, body: dict[str, object], token: str, last: str
) -> None:
    """The task stream replays a front-door task to anyone who asks; the request that admitted
    it owns it, so another reader that goes away (a console, a curl) must not cancel it."""
    with (
        httpx.Client(base_url=server.url, timeout=30) as owner,
        owner.stream("POST", path, json=body) as answer,
    ):
        lines = answer.iter_lines()
        _first_line_with(lines, token)
        task_id = answer.headers["x-task-id"]
        with (
            httpx.Client(base_url=server.url, timeout=30) as reader,
            reader.stream("GET", f"/v1/tasks/{task_id}/stream") as replay,
        ):
            _first_line_with(replay.iter_lines(), "event: token")
        rest = [line for line in lines if line]
    assert last in rest[-1], rest[-3:]
    assert not any('"error"' in line for line in rest), rest[-3:]
    end = httpx.get(f"{server.url}/v1/tasks/{task_id}/stream", timeout=30).text
    assert "event: end" in end
    assert '"canceled":true' not in end


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m1", "messages": CHAT}),
        ("/v1/completions", {"model": "m1", "prompt": "hi", "max_tokens": None}),
        ("/api/chat", {"model": "m1", "messages": CHAT, "stream": False}),
        ("/api/generate", {"model": "m1", "prompt": "hi", "stream": False}),
    ],
)
def test_a_front_door_request_without_a_length_fits_the_session_budget(
    server: ServeProcess, path: str, body: dict[str, object]
) -> None:
    """A request that sets no max_tokens (or num_predict) gets the front door's default; where
    the session's token budget is smaller, the default is cut to the budget, as it is to the
    context, instead of a 429 asking to lower a field the client never sent."""
    answer = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    assert 200 == answer.status_code, answer.text
    usage = answer.json().get("usage") or {"completion_tokens": answer.json()["eval_count"]}
    assert usage["completion_tokens"] <= TOKEN_BUDGET
    if path.startswith("/v1/"):  # an explicit length is still checked
        asked = {**body, "max_tokens": TOKEN_BUDGET + 1}
        assert 429 == httpx.post(f"{server.url}{path}", json=asked, timeout=30).status_code


def test_a_session_with_budget_left_gets_what_is_left(server: ServeProcess) -> None:
    session = {"X-Session-Id": "6f0c9d1e-0000-4000-8000-00000000b0d9"}
    body = {"model": "m1", "messages": CHAT}
    first = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={**body, "max_tokens": 20},
        headers=session,
        timeout=30,
    )
    rest = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=session, timeout=30)
    assert [200, 200] == [first.status_code, rest.status_code], rest.text
    spent = first.json()["usage"]["completion_tokens"] + rest.json()["usage"]["completion_tokens"]
    assert spent <= TOKEN_BUDGET


@pytest.mark.parametrize(
    ("prompt", "said"),
    [
        ([], "prompt is an empty list"),
        (["a", "b"], "more than one prompt"),
        ([1, 2], "token-id prompts are not supported"),
    ],
)
def test_a_legacy_completion_prompt_list_is_refused_for_what_it_is(
    server: ServeProcess, prompt: list[object], said: str
) -> None:
    body = {"model": "m0", "prompt": prompt, "max_tokens": 2}
    answer = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert 400 == answer.status_code
    assert said in answer.json()["error"]["message"]
    assert "prompt" == answer.json()["error"]["param"]


@pytest.mark.parametrize(
    ("keep_alive", "reason"),
    [
        (0, "unload"),
        (0.0, "unload"),
        ("0", "unload"),
        ("0s", "unload"),
        ("0h0m", "unload"),
        ("0.0ms", "unload"),
        ("-0s", "unload"),
        (-1, "load"),
        ("5m", "load"),
        ("1h30m", "load"),
        ("-1s", "load"),
        (None, "load"),
    ],
)
def test_keep_alive_reads_as_ollama_reads_it(
    server: ServeProcess, keep_alive: object, reason: str
) -> None:
    """A number of seconds or a Go duration; any zero duration unloads."""
    body = {"model": "m0", "prompt": "", "stream": False, "keep_alive": keep_alive}
    answer = httpx.post(f"{server.url}/api/generate", json=body, timeout=30)
    assert (200, reason) == (answer.status_code, answer.json().get("done_reason")), answer.text


@pytest.mark.parametrize("keep_alive", [False, True, "banana", "5", "5 m", "m", "", {"s": 5}, [0]])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings"])
def test_a_keep_alive_ollama_would_refuse_is_400(
    server: ServeProcess, keep_alive: object, path: str
) -> None:
    # A load request where there is one: nothing is generated whatever the answer.
    body = {"model": "m0", "keep_alive": keep_alive}
    loads = {"/api/generate": {"prompt": "", "stream": False}, "/api/chat": {"messages": []}}
    body.update(loads.get(path, {}))
    if path.startswith("/api/embed"):
        body["input" if path == "/api/embed" else "prompt"] = "hi"
    answer = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    assert 400 == answer.status_code, answer.text
    assert "keep_alive must be a number of seconds" in answer.json()["error"]


@pytest.mark.parametrize("asked", [None, 1])
def test_a_spent_budget_says_it_is_spent(server: ServeProcess, asked: int | None) -> None:
    """Once a session has used its whole token budget no length fits: the refusal says the
    budget is spent, not to lower max_tokens to 0 (which no request may send)."""
    session = {"X-Session-Id": f"6f0c9d1e-0000-4000-8000-0000000000{asked or 0:02d}"}
    url = f"{server.url}/v1/chat/completions"
    body = {"model": "m1", "messages": CHAT, "max_tokens": TOKEN_BUDGET}
    assert 200 == httpx.post(url, json=body, headers=session, timeout=30).status_code
    refused = httpx.post(url, json={**body, "max_tokens": asked}, headers=session, timeout=30)
    assert 429 == refused.status_code
    message = refused.json()["error"]["message"]
    assert "session token budget is spent" in message
    assert "at most 0" not in message


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "word " * 4000}]},
            "messages",
        ),
        ("/v1/completions", {"prompt": "word " * 4000}, "prompt"),
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": "word " * 4000}], "stream": False},
            "messages",
        ),
        ("/api/generate", {"prompt": "word " * 4000, "stream": False}, "prompt"),
    ],
)
def test_a_prompt_longer_than_the_context_is_refused_in_the_callers_terms(
    server: ServeProcess, path: str, body: dict[str, object], param: str
) -> None:
    """No length fits a prompt that fills the context: the refusal names the prompt and the
    model's context, not a max_tokens the client never sent or a ctx it cannot raise."""
    answer = httpx.post(f"{server.url}{path}", json={"model": "m1", **body}, timeout=30)
    assert 400 == answer.status_code
    error = answer.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert "context of 4096 tokens" in message
    assert "max_tokens" not in message
    assert "raise ctx" not in message
    if isinstance(error, dict):
        assert param == error["param"]


@pytest.mark.parametrize("max_tokens", ["abc", -1, 0, 2.5, 2**40])
def test_a_bad_max_tokens_beside_max_completion_tokens_is_still_refused(
    server: ServeProcess, max_tokens: object
) -> None:
    """max_completion_tokens wins when both are sent, but a max_tokens no request may carry is
    a mistake to report, not a value to drop unread."""
    body = {"model": "m0", "messages": CHAT, "max_completion_tokens": 2, "max_tokens": max_tokens}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert 400 == answer.status_code, answer.text
    assert "max_tokens" == answer.json()["error"]["param"]


def _lengths(n: int) -> list[tuple[str, dict[str, object], str]]:
    """A length of ``n`` at each door, with the name that door gives the field."""
    return [
        ("/v1/chat/completions", {"messages": CHAT, "max_tokens": n}, "max_tokens"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "max_completion_tokens": n},
            "max_completion_tokens",
        ),
        ("/v1/completions", {"prompt": "hi", "max_tokens": n}, "max_tokens"),
        (
            "/api/chat",
            {"messages": CHAT, "stream": False, "options": {"num_predict": n}},
            "options.num_predict",
        ),
        (
            "/api/generate",
            {"prompt": "hi", "stream": False, "options": {"num_predict": n}},
            "options.num_predict",
        ),
    ]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    # Only the OpenAI door refuses such a length: Ollama's num_predict is a most, cut to what
    # the context leaves (tests/e2e/test_frontdoor_ollama.py).
    [case for case in _lengths(5000) if case[0].startswith("/v1/")],
)
def test_a_length_past_the_context_names_the_field_the_client_sent(
    server: ServeProcess, path: str, body: dict[str, object], field: str
) -> None:
    answer = httpx.post(f"{server.url}{path}", json={"model": "m0", **body}, timeout=30)
    assert 400 == answer.status_code
    error = answer.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert f"{field} 5000" in message
    assert "context of 4096 tokens" in message
    assert "raise ctx" not in message
    if isinstance(error, dict):
        assert field == error["param"]


def _refusal(answer: httpx.Response) -> str:
    error = answer.json()["error"]
    return str(error["message"] if isinstance(error, dict) else error)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    # The OpenAI door's lengths; Ollama's num_predict is a most (the test below).
    [case for case in _lengths(31) if case[0].startswith("/v1/")],
)
def test_a_length_past_the_session_budget_names_the_field_the_client_sent(
    server: ServeProcess, path: str, body: dict[str, object], field: str
) -> None:
    """The budget refusal asks to lower the length the client sent, in its own API's name."""
    answer = httpx.post(f"{server.url}{path}", json={"model": "m1", **body}, timeout=30)
    assert 429 == answer.status_code, answer.text
    message = _refusal(answer)
    assert f"{field} is 31; lower {field} to at most {TOKEN_BUDGET}" in message
    if field != "max_tokens":
        assert "max_tokens" not in message


@pytest.mark.parametrize("num_predict", [TOKEN_BUDGET + 1, 100_000])
@pytest.mark.parametrize(
    ("path", "body"),
    [(path, body) for path, body, _ in _lengths(0) if path.startswith("/api/")],
)
def test_an_ollama_num_predict_past_the_budget_is_cut_to_it(
    server: ServeProcess, path: str, body: dict[str, object], num_predict: int
) -> None:
    """num_predict is a most, as Ollama reads it: past what the session's budget (or the
    context) leaves, the answer stops there with done_reason "length", never refused with a
    length the client did not send."""
    fields = {**body, "options": {"num_predict": num_predict}}
    answer = httpx.post(f"{server.url}{path}", json={"model": "m1", **fields}, timeout=30)
    assert 200 == answer.status_code, answer.text
    assert ("length", TOKEN_BUDGET) == (answer.json()["done_reason"], answer.json()["eval_count"])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"messages": CHAT, "stream": False, "options": {"num_predict": 1}}),
        ("/api/generate", {"prompt": "hi", "stream": False, "options": {"num_predict": 1}}),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 1}),
    ],
)
def test_a_front_door_turn_limit_names_the_session_header(
    server: ServeProcess, path: str, body: dict[str, object]
) -> None:
    """A front-door client names its session with X-Session-Id: the turn limit says to change
    that header, not a session_id field it never sent."""
    session = {"X-Session-Id": str(uuid.uuid4())}
    url = f"{server.url}{path}"
    for _ in range(MAX_TURNS):
        answer = httpx.post(url, json={"model": "m0", **body}, headers=session, timeout=30)
        assert 200 == answer.status_code, answer.text
    refused = httpx.post(url, json={"model": "m0", **body}, headers=session, timeout=30)
    assert 429 == refused.status_code
    message = _refusal(refused)
    assert f"used all {MAX_TURNS} turns" in message
    assert "X-Session-Id" in message
    assert "session_id" not in message


def test_the_openai_client_reads_budget_and_turn_refusals_in_its_own_terms(
    server: ServeProcess,
) -> None:
    session = str(uuid.uuid4())
    client = openai.OpenAI(
        base_url=f"{server.url}/v1",
        api_key="unused",
        max_retries=0,
        default_headers={"X-Session-Id": session},
    )
    with client:
        chat = client.chat.completions
        with pytest.raises(openai.RateLimitError) as too_long:
            chat.create(model="m1", messages=CHAT, max_completion_tokens=TOKEN_BUDGET + 1)  # type: ignore[arg-type]
        assert "lower max_completion_tokens to at most" in too_long.value.message
        for _ in range(MAX_TURNS):
            chat.create(model="m1", messages=CHAT, max_completion_tokens=1)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as no_turns:
            chat.create(model="m1", messages=CHAT, max_completion_tokens=1)  # type: ignore[arg-type]
    assert "X-Session-Id" in no_turns.value.message
    assert "session_id" not in no_turns.value.message
