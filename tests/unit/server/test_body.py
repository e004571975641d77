"""Request bodies end as soon as HTTP/1.1 framing says they are complete."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request
from starlette.types import Message

from llama_orch.server.body import body_chunks, read_body


def _request(
    http_version: str, headers: list[tuple[bytes, bytes]], messages: list[Message]
) -> tuple[Request, list[int]]:
    """A request whose ``receive`` hands out ``messages``, then waits forever (as a server
    does until the client leaves); ``calls`` counts the receives."""
    calls = [0]
    queue = list(messages)

    async def receive() -> Message:
        calls[0] += 1
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "http_version": http_version,
        "headers": headers,
        "query_string": b"",
    }
    return Request(scope, receive), calls


async def test_a_content_length_body_ends_without_waiting_for_the_server_end_message() -> None:
    body = b'{"prompt": "hi"}'
    request, calls = _request(
        "1.1",
        [(b"content-length", str(len(body)).encode())],
        # The server's end-of-body message never comes: the body must not wait for it.
        [{"type": "http.request", "body": body, "more_body": True}],
    )
    assert await asyncio.wait_for(read_body(request, 1024), 5) == body
    assert calls[0] == 1


async def test_a_body_in_several_chunks_ends_at_its_declared_length() -> None:
    request, calls = _request(
        "1.1",
        [(b"content-length", b"6")],
        [
            {"type": "http.request", "body": b"abc", "more_body": True},
            {"type": "http.request", "body": b"def", "more_body": True},
        ],
    )
    chunks = [chunk async for chunk in body_chunks(request)]
    assert (chunks, calls[0]) == ([b"abc", b"def"], 2)


@pytest.mark.parametrize(
    ("version", "headers"),
    [
        ("2", [(b"content-length", b"3")]),
        ("1.1", [(b"transfer-encoding", b"chunked")]),
        ("1.1", [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")]),
    ],
)
async def test_other_framings_read_to_the_server_end_message(
    version: str, headers: list[tuple[bytes, bytes]]
) -> None:
    request, calls = _request(
        version,
        headers,
        [
            {"type": "http.request", "body": b"abc", "more_body": True},
            {"type": "http.request", "body": b"", "more_body": False},
        ],
    )
    assert await asyncio.wait_for(read_body(request, 1024), 5) == b"abc"
    assert calls[0] == 2
