"""Batch-parsing a chunk's payloads gives exactly what parsing them one by one gives."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from llama_orch.adapters._base import DONE, BadFrame, parse_payloads
from tests.property.sse_strategies import token_text

json_objects = st.dictionaries(
    st.sampled_from(["content", "stop", "error", "index"]),
    st.one_of(token_text, st.integers(-(2**53), 2**53), st.booleans(), st.none()),
    max_size=4,
).map(orjson.dumps)
# Near-misses: braces in the right places but not one JSON object each, and [DONE].
junk = st.sampled_from(
    [
        b'{"a":1},{"b":2}',
        b'{"a":1},0,{"b":2}',
        b'{"a":"}',
        b'{","b":1}',
        b"{",
        b"}",
        b'{"x": [1}',
        b"[DONE]",
        b"1,2",
        b"7",
    ]
)


def one_by_one(payloads: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for payload in payloads:
        if payload == b"[DONE]":
            out.append("DONE")
            continue
        try:
            out.append(orjson.loads(payload))
        except orjson.JSONDecodeError:
            out.append("BAD")
            break
    return out


def normalized(parsed: list[Any]) -> list[Any]:
    return ["DONE" if p is DONE else "BAD" if isinstance(p, BadFrame) else p for p in parsed]


class TestParsePayloads:
    @given(st.lists(st.one_of(json_objects, junk), max_size=12))
    def test_batch_equals_one_by_one(self, payloads: list[bytes]) -> None:
        """Whatever the mix of objects, [DONE] and malformed frames, the result is the same."""
        assert one_by_one(payloads) == normalized(parse_payloads(payloads, "llamacpp"))
