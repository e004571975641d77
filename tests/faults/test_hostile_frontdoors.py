"""Hostile and careless clients of the OpenAI and Ollama front doors and the control routes,
against ``llorch serve``: every mistake is a 4xx in the caller's error shape naming what was
wrong, never a 500, and the server logs no error for it."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.faults._raw import connect, serve_config
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import mock_pool, task_body

MODEL = "m0"
CHAT = [{"role": "user", "content": "hi"}]
PROMPT_LIMIT = 100_000
CTX = 131_072


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("hostile-frontdoors")
    pool = mock_pool(
        "p0",
        MODEL,
        ctx=CTX,
        slots=2,
        supported_workloads=["completion", "embedding", "rerank"],
        mock={"ctx_max": CTX},
    )
    config = serve_config(
        pool, max_prompt_bytes=PROMPT_LIMIT, artifacts_dir=str(workdir / "artifacts")
    )
    with serve_process(config, workdir) as served:
        yield served
    log = served.log_path.read_text(encoding="utf-8")
    assert "Traceback" not in log
    assert '"level":"error"' not in log


def _log_lines_after(server: ServeProcess, mark: int, target: str) -> list[dict[str, Any]]:
    """The JSON log lines written since ``mark``, once one about ``target`` is there (30 s at
    most)."""
    deadline = time.monotonic() + 30
    while True:
        text = server.log_path.read_bytes()[mark:].decode()
        lines = [json.loads(line) for line in text.splitlines()]
        if any(line.get("target") == target for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _post(server: ServeProcess, path: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=30)


def _message(response: httpx.Response) -> str:
    """The error message of either front door's error shape (or the task API's envelope)."""
    error = response.json().get("error", response.json())
    return str(error["message"] if isinstance(error, dict) else error)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/rerank",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/v1/artifacts",
    ],
)
def test_a_client_that_leaves_mid_body_is_a_client_mistake(server: ServeProcess, path: str) -> None:
    """The body ends early: one info line with a 400, no error and no stack trace in the log."""
    mark = server.log_path.stat().st_size
    with connect(server.url) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n".encode()
            + b'{"model'
        )
        sock.shutdown(socket.SHUT_RDWR)
    lines = _log_lines_after(server, mark, path)
    answered = [(line["level"], line.get("status")) for line in lines if line.get("target") == path]
    assert [("info", 400)] == answered
    assert not [line for line in lines if line["level"] in ("error", "critical")]


_OPENAI_BOUNDS = [
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 2**31}, "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": 10**19}, "max_compl"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2**40}, "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "stop": "x" * 1025}, "stop"),
    ("/v1/completions", {"prompt": "hi", "stop": ["ok", "y" * 5000]}, "stop"),
    ("/v1/chat/completions", {"messages": [{"role": ["user"], "content": "x"}]}, "role"),
    ("/v1/chat/completions", {"messages": [{"role": {"r": 1}, "content": "x"}]}, "role"),
]
_OLLAMA_BOUNDS = [
    ("/api/chat", {"messages": CHAT, "options": {"num_predict": 2**31}}, "num_predict"),
    ("/api/generate", {"prompt": "hi", "options": {"num_predict": 2**62}}, "num_predict"),
    ("/api/chat", {"messages": CHAT, "options": {"stop": ["x" * 1025]}}, "stop"),
    ("/api/chat", {"messages": [{"role": {"r": 1}, "content": "x"}]}, "role"),
]


@pytest.mark.parametrize(
    ("path", "fields", "named"),
    _OPENAI_BOUNDS + _OLLAMA_BOUNDS,
    ids=[f"{p}-{n}-{i}" for i, (p, _, n) in enumerate(_OPENAI_BOUNDS + _OLLAMA_BOUNDS)],
)
def test_values_past_the_task_contract_are_refused_by_name(
    server: ServeProcess, path: str, fields: dict[str, Any], named: str
) -> None:
    """Numbers past what a task can carry, over-long stop sequences and roles that are not
    strings: a 400 in the door's own error shape that names the field, never a 500."""
    response = _post(server, path, {"model": MODEL, "stream": False, **fields})
    assert 400 == response.status_code, response.text
    error = response.json()["error"]
    if path.startswith("/v1/"):
        assert "invalid_request_error" == error["type"]
        assert named in (error["param"] or "")
        assert named in error["message"]
    else:
        assert isinstance(error, str) and named in error


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 10**30}),
        ("/v1/completions", {"prompt": "hi", "seed": 2**64}),
        ("/api/chat", {"messages": CHAT, "options": {"top_k": -(10**20)}}),
    ],
)
def test_an_integer_past_64_bits_is_called_too_large(
    server: ServeProcess, path: str, fields: dict[str, Any]
) -> None:
    """It is a valid JSON integer: the refusal says it is too large, not that it is a float."""
    response = _post(server, path, {"model": MODEL, "stream": False, **fields})
    assert 400 == response.status_code, response.text
    assert _message(response).endswith("got an integer past 64 bits")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
@pytest.mark.parametrize("deadline", ["99999999999999999999", str(2**63)])
def test_a_deadline_header_past_int64_is_refused(
    server: ServeProcess, path: str, deadline: str
) -> None:
    body = {"model": MODEL, "messages": CHAT, "stream": False}
    response = _post(server, path, body, **{"X-Deadline-Ms": deadline})
    assert 400 == response.status_code, response.text
    assert "X-Deadline-Ms" in _message(response)


def test_an_escaped_prompt_within_the_limit_passes_the_front_door(server: ServeProcess) -> None:
    """25,000 emoji are 100,000 UTF-8 bytes, but 300,000 bytes of JSON once ASCII-escaped: the
    front door takes what the task API takes, and measures the prompt decoded."""
    prompt = "\U0001f600" * (PROMPT_LIMIT // 4)
    headers = {"Content-Type": "application/json"}

    def complete(text: str) -> httpx.Response:
        body = {"model": MODEL, "prompt": text, "max_tokens": 1}
        escaped = json.dumps(body, ensure_ascii=True).encode()
        assert len(escaped) > 3 * PROMPT_LIMIT
        url = f"{server.url}/v1/completions"
        return httpx.post(url, content=escaped, headers=headers, timeout=60)

    ok, too_long = complete(prompt), complete(prompt + "x")
    assert 200 == ok.status_code, ok.text
    assert 400 == too_long.status_code
    assert f"prompt is {PROMPT_LIMIT + 1} bytes" in _message(too_long)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/chat/completions", "messages"),
        ("/v1/embeddings", "input"),
        ("/api/chat", "messages"),
        ("/api/generate", "prompt"),
        ("/v1/pools/p0/drain", "pad"),
    ],
)
def test_a_body_past_the_limit_is_413_in_the_callers_shape(
    server: ServeProcess, path: str, field: str
) -> None:
    """Far more bytes than any prompt within the limit needs: refused as content too large,
    in the error shape the caller speaks, not read into memory whole."""
    filler = "x" * (8 * PROMPT_LIMIT)
    body: dict[str, Any] = {"model": MODEL}
    body[field] = [{"role": "user", "content": filler}] if field == "messages" else filler
    response = _post(server, path, body)
    assert 413 == response.status_code, response.text
    assert "request body exceeds" in _message(response)


def test_a_drain_deadline_past_int64_is_refused_before_the_drain(server: ServeProcess) -> None:
    """The drain would start, then its answer fail to render: the pool left draining."""
    response = _post(server, "/v1/pools/p0/drain", {"deadline_ms": 2**70})
    assert (400, "INVALID_PARAMS") == (response.status_code, response.json()["code"])
    assert "deadline_ms" in response.json()["message"]
    health = httpx.get(f"{server.url}/v1/pools/p0/health", timeout=30).json()
    assert (False, True) == (health["draining"], health["ready"])


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/chat/completions", "POST"),
        ("GET", "/api/generate", "POST"),
        ("DELETE", "/v1/artifacts", "GET, HEAD, POST"),
    ],
)
def test_a_wrong_method_says_which_ones_are_served(
    server: ServeProcess, method: str, path: str, allow: str
) -> None:
    response = httpx.request(method, f"{server.url}{path}", timeout=30)
    assert 405 == response.status_code
    served = response.headers["allow"]
    assert sorted(allow.split(", ")) == sorted(served.split(", "))
    assert "x-correlation-id" in response.headers
    body = response.json()
    # Each in the error shape of its API: OpenAI's, Ollama's, the task API's envelope.
    message = body["error"] if path.startswith("/api/") else body.get("error", body)["message"]
    assert f"{method} is not served on {path}; use {served}" == message
    assert path.startswith("/v1/artifacts") is ("code" in body)


@pytest.mark.parametrize(
    ("accept", "streamed"),
    [
        ("text/event-stream", True),
        ("Text/Event-Stream; charset=utf-8", True),
        ("application/json, text/event-stream;q=0.5", True),
        ("text/event-stream;q=0, application/json", False),
        ("text/event-stream; q=0.0", False),
        ("application/json", False),
    ],
)
def test_a_task_streams_in_one_hop_only_when_the_client_accepts_it(
    server: ServeProcess, accept: str, streamed: bool
) -> None:
    """``q=0`` refuses a media type (RFC 9110): such a client gets the 202, not a stream."""
    body = task_body(model=MODEL, ctx=CTX, max_tokens=2)
    response = _post(server, "/v1/tasks", body, Accept=accept)
    if streamed:
        assert (200, "text/event-stream") == (
            response.status_code,
            response.headers["content-type"].split(";")[0],
        )
        assert "event: end" in response.text
    else:
        assert (202, body["task_id"]) == (response.status_code, response.json()["task_id"])


def test_a_deadline_refusal_names_the_header_that_set_it(server: ServeProcess) -> None:
    """A front-door caller never set ``deadline_ms``: the refusal says it is X-Deadline-Ms."""
    busy = [task_body(model=MODEL, ctx=CTX, max_tokens=50_000) for _ in range(2)]
    try:
        for body in busy:
            assert 202 == _post(server, "/v1/tasks", body).status_code
        chat = {"model": MODEL, "messages": CHAT, "stream": False}
        refused = [
            _post(server, path, chat, **{"X-Deadline-Ms": "1"})
            for path in ("/v1/chat/completions", "/api/chat")
        ]
    finally:
        for body in busy:
            httpx.post(f"{server.url}/v1/tasks/{body['task_id']}/cancel", timeout=30)
    assert [400, 400] == [r.status_code for r in refused]
    assert "deadline_unmet" == refused[0].json()["error"]["code"]
    for response in refused:
        assert "X-Deadline-Ms request header, 600000 when it is absent" in _message(response)
