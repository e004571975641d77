"""llorch against answers it cannot trust: each ends in one line saying what was wrong and a
documented exit status, never a traceback, and text from the server never drives the
terminal (real subprocesses; the server is simulated: a real llama-orch never sends these
answers, so a small HTTP server that carries llama-orch's correlation header sends them)."""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.test_cli import run
from tests.support.server import config_of, mock_pool, running_server

JSON = "application/json"
SSE = "text/event-stream"
CAPS = (
    b'{"pools": [{"pool_id": "p0", "engine": "mock", "model_id": "m0", "ctx_max": 2048,'
    b' "ready": true}]}'
)
ADMITTED = b'{"task_id": "t1", "pool_id": "p0", "queue_position": 0, "predicted_start_ms": 0}'


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = JSON
    #: Announce more than the body and close the connection after it: a server that dies
    #: mid-answer.
    cut: bool = False


class _Simulated(http.server.BaseHTTPRequestHandler):
    """Answers each path with the first ``Answer`` whose prefix matches (simulated)."""

    protocol_version = "HTTP/1.1"
    answers: dict[str, Answer] = {}

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        answer = next(
            (a for prefix, a in self.answers.items() if self.path.startswith(prefix)),
            Answer(404, b'{"code": "NOT_FOUND", "message": "no such path"}'),
        )
        self.send_response(answer.status)
        self.send_header("X-Correlation-Id", "simulated")
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body) + 100 * answer.cut))
        self.end_headers()
        self.wfile.write(answer.body)
        self.close_connection = answer.cut

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def simulated() -> Iterator[tuple[str, dict[str, Answer]]]:
    answers: dict[str, Answer] = {}
    handler = type("Handler", (_Simulated,), {"answers": answers})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _stream(frames: bytes) -> dict[str, Answer]:
    return {
        "/v1/capabilities": Answer(200, CAPS),
        "/v1/tasks/": Answer(200, frames, SSE),
        "/v1/tasks": Answer(202, ADMITTED),
    }


def _args(command: str, url: str) -> list[str]:
    """``command`` pointed at ``url`` (the models group takes --url before its subcommand)."""
    words = command.split()
    if words[0] == "models":
        return [words[0], "--url", url, *words[1:]]
    return [*words, *(["hi"] if words == ["submit"] else []), "--url", url]


UNREADABLE = [
    ("submit", {"/v1/capabilities": Answer(200, b"<html>")}, "GET", "/v1/capabilities"),
    ("submit", {"/v1/capabilities": Answer(200, b"[1, 2]")}, "GET", "/v1/capabilities"),
    (
        "submit",
        {"/v1/capabilities": Answer(200, CAPS), "/v1/tasks": Answer(202, b"{}")},
        "POST",
        "/v1/tasks",
    ),
    ("submit", _stream(b"event: token\ndata: not json\n\n"), "GET", "/v1/tasks/t1/stream"),
    ("submit", _stream(b'event: token\ndata: {"x": 1}\n\n'), "GET", "/v1/tasks/t1/stream"),
    ("pools", {"/v1/capabilities": Answer(200, b'{"pools": [{}]}')}, "GET", "/v1/capabilities"),
    (
        "pools",
        {"/v1/capabilities": Answer(200, CAPS), "/v1/pools/": Answer(200, b"x")},
        "GET",
        "/v1/pools/p0/health",
    ),
    ("pools drain p0", {"/v1/pools/": Answer(202, b"ok")}, "POST", "/v1/pools/p0/drain"),
    ("status", {"/v1/status": Answer(200, b"nope")}, "GET", "/v1/status"),
    ("artifacts get a1", {"/v1/artifacts/": Answer(200, b"x")}, "GET", "/v1/artifacts/a1"),
    ("artifacts ls", {"/v1/artifacts": Answer(200, b"{}")}, "GET", "/v1/artifacts"),
    ("models ls", {"/v1/catalog/models": Answer(200, b"[]")}, "GET", "/v1/catalog/models"),
    ("selftest", {"/v1/capabilities": Answer(200, b"x")}, "GET", "/v1/capabilities"),
    # A page cursor that comes back again would have these commands page forever.
    (
        "artifacts ls --all",
        {"/v1/artifacts": Answer(200, b'{"items": [], "next": "c1"}')},
        "GET",
        "/v1/artifacts",
    ),
    (
        "models ls",
        {"/v1/catalog/models": Answer(200, b'{"models": [], "next_cursor": "c1"}')},
        "GET",
        "/v1/catalog/models",
    ),
]


class TestUnreadableAnswers:
    @pytest.mark.parametrize(("command", "answers", "method", "path"), UNREADABLE)
    async def test_an_answer_of_another_shape_is_one_line(
        self,
        simulated: tuple[str, dict[str, Answer]],
        command: str,
        answers: dict[str, Answer],
        method: str,
        path: str,
    ) -> None:
        """A body that is not JSON, not an object, or lacks a field the command reads ends
        the command with status 1 and one line naming the request, not a traceback."""
        url, served = simulated
        served.update(answers)
        args = _args(command, url)
        code, _, err = await run(*args)
        assert "Traceback" not in err
        assert 1 == code, err
        last = err.rstrip("\n").split("\n")[-1]
        assert last.startswith(f"llorch: {method} {url}{path} answered HTTP "), err
        assert "this client cannot read" in last

    async def test_an_error_body_that_is_not_an_object(
        self, simulated: tuple[str, dict[str, Answer]]
    ) -> None:
        """An error answer whose JSON is a list is shown as it came, in one line."""
        url, served = simulated
        served["/v1/catalog/models/"] = Answer(500, b"[1]")
        served["/v1/capabilities"] = Answer(500, b"[1]")
        for args in (("submit", "hi", "--url", url), ("models", "--url", url, "show", "m1")):
            code, _, err = await run(*args)
            assert (1, "llorch: HTTP 500 [1]\n") == (code, err), args


#: JSON-encoded: an OSC that retitles the window (click strips only CSI colour codes, and
#: only off a terminal), the C1 CSI, a right-to-left override, a carriage return, a newline.
HOSTILE = "boom\\n\\u001b]0;owned\\u0007\\u009b31m\\u202eevil\\r"
#: What may not reach the terminal raw (line breaks aside: each output line is checked).
_RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")

SERVER_TEXT = [
    (
        "submit",
        _stream(
            b'event: error\ndata: {"code": "ENGINE_ERROR", "message": "%s"}\n\n' % HOSTILE.encode()
        ),
    ),
    (
        "pools drain p0",
        {"/v1/pools/": Answer(202, b'{"pool_id": "p0", "state": "%s"}' % HOSTILE.encode())},
    ),
    (
        "artifacts ls",
        {
            "/v1/artifacts": Answer(
                200,
                b'{"items": [{"id": "a1", "kind": "doc", "created_ms": 1, "tags": ["%s"]}]}'
                % HOSTILE.encode(),
            )
        },
    ),
    (
        "artifacts get a1",
        {
            "/v1/artifacts/": Answer(
                200, b'{"id": "a1", "content": {"text": "%s"}}' % HOSTILE.encode()
            )
        },
    ),
    (
        "models ls",
        {
            "/v1/catalog/models": Answer(
                200,
                b'{"models": [{"id": "m1", "gguf": {"architecture": "%s"}}]}' % HOSTILE.encode(),
            )
        },
    ),
    (
        "models show m1",
        {
            "/v1/catalog/models/": Answer(
                500,
                b'{"code": "X", "message": "%s", "hint": "%s"}'
                % (HOSTILE.encode(), HOSTILE.encode()),
            )
        },
    ),
]


class TestServerText:
    @pytest.mark.parametrize(("command", "answers"), SERVER_TEXT)
    async def test_server_text_cannot_drive_the_terminal(
        self, simulated: tuple[str, dict[str, Answer]], command: str, answers: dict[str, Answer]
    ) -> None:
        """An engine's error in a stream's error frame, a pool's state, another client's
        artifact tags and content, a model file's architecture: each is shown with its control
        characters and bidirectional overrides escaped, on the lines it belongs to."""
        url, served = simulated
        served.update(answers)
        args = _args(command, url)
        code, out, err = await run(*args)
        assert "Traceback" not in err
        assert (1 if command in ("submit", "models show m1") else 0) == code, err
        for line in (out + err).split("\n"):
            assert not _RAW.search(line), (command, line)
        assert "\\x1b]0;owned\\x07" in out + err or "\\u001b]0;owned\\u0007" in out
        if command == "artifacts get a1":
            assert "boom\n\x1b]0;owned\x07\x9b31m\u202eevil\r" == json.loads(out)["content"]["text"]


#: An error message of a megabyte (a server quoting a whole engine log, say).
ENORMOUS = b"x" * 2**20
ENORMOUS_ERRORS = [
    ("cancel t1", {"/v1/tasks/": Answer(500, b'{"code": "X", "message": "%s"}' % ENORMOUS)}),
    (
        "submit",
        _stream(b'event: error\ndata: {"code": "ENGINE_ERROR", "message": "%s"}\n\n' % ENORMOUS),
    ),
    (
        "models show m1",
        {"/v1/catalog/models/": Answer(500, b'{"code": "X", "message": "%s"}' % ENORMOUS)},
    ),
]


class TestEnormousText:
    @pytest.mark.parametrize(("command", "answers"), ENORMOUS_ERRORS)
    async def test_an_enormous_error_message_is_cut(
        self, simulated: tuple[str, dict[str, Answer]], command: str, answers: dict[str, Answer]
    ) -> None:
        """The error line quotes the start of a megabyte-long message and says how much it
        left out, rather than filling the terminal's scrollback with one line."""
        url, served = simulated
        served.update(answers)
        code, _, err = await run(*_args(command, url))
        assert 1 == code, err[:400]
        last = err.rstrip("\n").split("\n")[-1]
        assert len(last) < 1000, last[:400]
        assert "more characters)" in last

    async def test_enormous_status_cells_are_cut(
        self, simulated: tuple[str, dict[str, Answer]]
    ) -> None:
        """A pool id, model name and error of ten thousand characters each are cut in the
        `llorch status` tables (saying how much was left out), so every row stays readable."""
        async with running_server(config_of(mock_pool("p0"))) as srv:
            doc = (await srv.client.get("/v1/status")).json()
        pool = doc["pool"]["pools"][0]
        pool.update(pool_id="p" * 10_000, model="m" * 10_000, last_error="e" * 10_000)
        url, served = simulated
        served["/v1/status"] = Answer(200, json.dumps(doc).encode())
        code, out, err = await run("status", "--url", url)
        assert 0 == code, err[:400]
        row = next(line for line in out.split("\n") if "ppp" in line)
        assert "mmm" in row and "eee" in row
        assert all(len(line) < 1000 for line in out.split("\n")), max(map(len, out.split("\n")))
        assert "more characters)" in row


class TestBrokenStream:
    async def test_a_stream_that_breaks_names_the_task(
        self, simulated: tuple[str, dict[str, Answer]]
    ) -> None:
        """The server accepted the task, then its stream broke mid-answer: the task may still
        run, so the line names it and how to end it (status 1: the server was reached)."""
        url, served = simulated
        served.update(_stream(b'event: started\ndata: {}\n\nevent: token\ndata: {"t": "he'))
        served["/v1/tasks/"] = Answer(200, served["/v1/tasks/"].body, SSE, cut=True)
        code, _, err = await run("submit", "hi", "--url", url)
        assert "Traceback" not in err
        last = err.rstrip("\n").split("\n")[-1]
        assert 1 == code, err
        assert last.startswith("llorch: the stream of task t1 broke"), last
        assert "llorch cancel t1" in last


class TestCredentialsInTheUrl:
    async def test_a_password_in_the_url_is_never_shown(
        self, simulated: tuple[str, dict[str, Answer]]
    ) -> None:
        """A --url carrying a proxy's user and password (http://user:pass@host) is shown with
        them redacted in every message that names the server: nothing listening there, an
        answer the client cannot read."""
        url, served = simulated
        served["/v1/status"] = Answer(200, b"nope")
        secret_url = url.replace("http://", "http://user:pa55word-9f1c@")
        down = "http://user:pa55word-9f1c@127.0.0.1:9"
        for args, expected in (
            (("status", "--url", secret_url), 1),
            (("status", "--url", down), 3),
            (("pools", "--url", down), 3),
            (("submit", "hi", "--url", down), 3),
        ):
            code, _, err = await run(*args)
            assert expected == code, err
            assert "pa55word" not in err and "[REDACTED]@127.0.0.1:" in err, err


class TestSilentServer:
    async def test_a_server_that_never_answers_is_given_up_on(self) -> None:
        """A server that takes the connection and never answers (a wedged process, a proxy
        holding the request) ends `llorch status` after the read timeout with status 3 and
        one line, instead of hanging the operator's terminal or script for ever."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            url = f"http://127.0.0.1:{listener.getsockname()[1]}"
            code, _, err = await run("status", "--url", url, timeout=60)
        assert "Traceback" not in err
        assert 3 == code, err
        assert err.startswith(f"llorch: cannot reach {url}: no answer within 10 s"), err
        assert 1 == err.count("\n")
