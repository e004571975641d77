"""A hostile OpenAI-compatible engine answering embeddings: vectors holding other things than
numbers, vectors of differing lengths, an HTML page with status 200. Each answer is refused
with the caller's error shape naming the engine (never a vector the client would misread,
never a hang or a traceback), and the slot serves the next request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tests.faults.test_hostile_engine import MODEL, Script, _serving

EMBED_POOL = {"supported_workloads": ["completion", "embedding"], "embedding_batch": 8}


def _json_answer(document: bytes, content_type: bytes = b"application/json") -> Script:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (content_type, len(document), document)
        )

    return script


def _embeddings(*vectors: list[object]) -> bytes:
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    usage = {"prompt_tokens": 3, "total_tokens": 3}
    return orjson.dumps({"object": "list", "data": data, "usage": usage})


HOSTILE = {
    "a-string-inside-a-vector": _json_answer(_embeddings([0.5, "0.5", 0.25], [0.1, 0.2, 0.3])),
    "a-null-inside-a-vector": _json_answer(_embeddings([0.5, 0.5, 0.25], [0.1, None, 0.3])),
    "a-value-past-float32": _json_answer(_embeddings([0.5, 1e39, 0.25], [0.1, 0.2, 0.3])),
    "vectors-of-two-lengths": _json_answer(_embeddings([0.5, 0.5, 0.25], [0.1, 0.2])),
    "an-html-page": _json_answer(b"<html><body>502 Bad Gateway</body></html>", b"text/html"),
}

EXPECTED = {
    "a-string-inside-a-vector": "holds a value that is not a number",
    "a-null-inside-a-vector": "holds a value that is not a number",
    "a-value-past-float32": "beyond the float32 range",
    "vectors-of-two-lengths": "embeddings of 2 and 3 values in one answer",
    "an-html-page": "the answer is not JSON (text/html, 41 bytes)",
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("case", "encoding"),
    [
        ("a-string-inside-a-vector", "float"),
        ("a-null-inside-a-vector", "base64"),
        ("a-value-past-float32", "base64"),
        ("vectors-of-two-lengths", "float"),
        ("an-html-page", "float"),
    ],
)
async def test_a_malformed_embedding_answer_is_refused(
    case: str, encoding: str, tmp_path: Path
) -> None:
    async with _serving(HOSTILE[case], tmp_path, **EMBED_POOL) as (srv, client, _):
        body = {"model": MODEL, "input": ["one", "two"], "encoding_format": encoding}
        answer = await client.post("/v1/embeddings", json=body)
        # The slot is back: a well-behaved generation runs next.
        again = await client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
    log = srv.log_path.read_text()
    assert 500 == answer.status_code, answer.text
    error = answer.json()["error"]
    assert "openai at http://127.0.0.1" in error["message"], error
    assert EXPECTED[case] in error["message"], error
    assert 200 == again.status_code, again.text
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.timeout(120)
async def test_vectors_changing_size_between_batches_fail_the_task(tmp_path: Path) -> None:
    """One text a batch: the first answer has 3 values, the second 2. The task fails naming
    both sizes rather than answering vectors of two sizes."""
    pool = {**EMBED_POOL, "embedding_batch": 1}
    async with _serving(None, tmp_path, **pool) as (srv, client, engine):
        second = _json_answer(_embeddings([0.1, 0.2]))

        async def first(writer: asyncio.StreamWriter) -> None:
            engine.script = second
            await _json_answer(_embeddings([0.5, 0.5, 0.25]))(writer)

        engine.script = first
        answer = await client.post("/v1/embeddings", json={"model": MODEL, "input": ["a", "b"]})
    assert 500 == answer.status_code, answer.text
    message = answer.json()["error"]["message"]
    assert "embeddings of 3 values, then of 2 in a later batch" in message, message
    assert "Traceback" not in srv.log_path.read_text()
