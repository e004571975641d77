"""The fake llama.cpp server's connection handling, as llama-server does it, on a raw socket."""

from __future__ import annotations

import asyncio

import orjson

from llama_orch.testing.fake_engines import FakeLlamaCpp

#: Bounds a read that should return at once, so a kept-alive socket fails instead of hanging.
_READ_LIMIT_S = 30.0


def completion(*, stream: bool) -> bytes:
    body = orjson.dumps({"prompt": "hello", "n_predict": 3, "seed": 7, "stream": stream})
    head = (
        "POST /completion HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response's head and body: chunked up to the last chunk, else by content-length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_LIMIT_S)
    if b"transfer-encoding: chunked" in head.lower():
        body = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), _READ_LIMIT_S)
        return head, body
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), _READ_LIMIT_S)


async def read_to_the_end(reader: asyncio.StreamReader) -> bytes:
    """What still arrives before the server ends the connection (a reset counts as the end)."""
    try:
        return await asyncio.wait_for(reader.read(), _READ_LIMIT_S)
    except ConnectionResetError:
        return b""


class TestConnectionReuse:
    async def test_a_stream_ends_the_connection_though_its_headers_allow_keep_alive(
        self,
    ) -> None:
        """After a streamed /completion the server closes the socket: a second request sent on
        it gets no answer, while the stream's headers never said ``Connection: close``."""
        async with FakeLlamaCpp() as fake:
            reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
            try:
                writer.write(completion(stream=True))
                head, body = await read_response(reader)
                writer.write(completion(stream=False))
                rest = await read_to_the_end(reader)
            finally:
                writer.close()
        assert head.startswith(b"HTTP/1.1 200")
        assert b"connection: close" not in head.lower()
        assert b'"stop":true' in body
        assert b"" == rest
        assert 1 == len(fake.requests)

    async def test_plain_answers_and_probes_keep_the_connection(self) -> None:
        """A non-streamed completion and a health probe leave the connection open for the next
        request, which can then be a stream."""
        async with FakeLlamaCpp() as fake:
            reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
            try:
                writer.write(completion(stream=False))
                plain = await read_response(reader)
                writer.write(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
                health = await read_response(reader)
                writer.write(completion(stream=True))
                streamed = await read_response(reader)
            finally:
                writer.close()
        assert [b"HTTP/1.1 200"] * 3 == [r[0][:12] for r in (plain, health, streamed)]
        assert b'"stop":true' in streamed[1]
        assert 2 == len(fake.requests)
