"""Protocol details a careful client notices: headers of SSE answers, unbounded lists,
half-closed connections."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.faults._raw import connect, read_until_closed, serve_config, status_of
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import task_body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serve_process(serve_config(), tmp_path_factory.mktemp("protocol")) as served:
        yield served


def _head(response: bytes) -> list[tuple[str, str]]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return [
        (name.strip().lower(), value.strip()) for name, _, value in (h.partition(":") for h in head)
    ]


def test_an_sse_answer_to_connection_close_says_close_only(server: ServeProcess) -> None:
    body = task_body(max_tokens=3)
    assert 202 == httpx.post(f"{server.url}/v1/tasks", json=body, timeout=30).status_code
    with connect(server.url) as sock:
        sock.sendall(
            f"GET /v1/tasks/{body['task_id']}/stream HTTP/1.1\r\nHost: localhost\r\n".encode()
            + b"Connection: close\r\n\r\n"
        )
        response = read_until_closed(sock)
    assert 200 == status_of(response)
    assert [("connection", "close")] == [h for h in _head(response) if h[0] == "connection"]
    assert b"event: end" in response


@pytest.mark.parametrize("field", ["prefer_pools", "avoid_pools"])
def test_placement_pool_lists_are_bounded(server: ServeProcess, field: str) -> None:
    placement = {"mode": "prefer" if field == "prefer_pools" else "auto", field: ["p0"] * 65}
    response = httpx.post(f"{server.url}/v1/tasks", json=task_body(placement=placement), timeout=30)
    assert (400, "INVALID_PARAMS") == (response.status_code, response.json()["code"])
    assert field in response.json()["message"]


def test_a_half_closed_client_does_not_disturb_the_server(server: ServeProcess) -> None:
    """A client that shuts its sending side after a full request may get no answer (hyper ends
    the connection at end of input; docs/security.md); the server serves the next one."""
    with connect(server.url) as sock:
        sock.sendall(b"GET /v1/capabilities HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        response = read_until_closed(sock)
    assert response == b"" or status_of(response) == 200
    assert 200 == httpx.get(f"{server.url}/v1/capabilities", timeout=30).status_code


def test_a_head_of_a_task_stream_leaves_the_task_running(server: ServeProcess) -> None:
    """HEAD (a probe, ``curl -I``) says what a GET would get; it neither subscribes nor reads
    as a client leaving, which would cancel the task."""
    body = task_body(max_tokens=200)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert 202 == client.post("/v1/tasks", json=body).status_code
        head = client.head(f"/v1/tasks/{body['task_id']}/stream")
        unknown = client.head(f"/v1/tasks/{uuid.uuid4()}/stream")
        stream = client.get(f"/v1/tasks/{body['task_id']}/stream")
    assert (200, "text/event-stream") == (
        head.status_code,
        head.headers["content-type"].split(";")[0],
    )
    assert 404 == unknown.status_code
    end = stream.text.rsplit("event: end\ndata: ", 1)[1]
    assert (200, 200) == (json.loads(end)["tokens_out"], stream.status_code)
    assert "canceled" not in json.loads(end)


def test_a_head_of_a_watched_task_stream_is_a_conflict_as_a_get_is(server: ServeProcess) -> None:
    """While a subscriber reads the stream, a GET is 409; a HEAD, which says what a GET would
    get, is 409 too, instead of a 200 that the GET it announces then contradicts."""
    # Long enough (seconds at the mock's pace) to be still streaming; it is canceled at the end.
    body = task_body(max_tokens=2000)
    url = f"{server.url}/v1/tasks/{body['task_id']}/stream"
    assert 202 == httpx.post(f"{server.url}/v1/tasks", json=body, timeout=30).status_code
    with httpx.Client(timeout=30) as reader, reader.stream("GET", url) as live:
        # Kept: a dropped line iterator closes the response, which would end the subscription.
        lines = live.iter_lines()
        assert "event: started" == next(lines)
        head = httpx.head(url, timeout=30)
        second = httpx.get(url, timeout=30)
    httpx.post(f"{server.url}/v1/tasks/{body['task_id']}/cancel", timeout=30)
    assert (409, 409) == (head.status_code, second.status_code)
