"""The mock engine under a huge ``max_tokens``: lazy, linear, and fair to the event loop."""

from __future__ import annotations

import asyncio
import itertools
import random

from llama_orch.adapters.mock import (
    _VOCAB,
    MockEngine,
    determinism_seed,
    iter_mock_tokens,
    mock_tokens,
)
from llama_orch.config import MockEngineConfig
from llama_orch.contracts.engine import GenerateRequest


def _request(max_tokens: int, stop: tuple[str, ...] = ()) -> GenerateRequest:
    return GenerateRequest(
        task_id="t", prompt="hi", max_tokens=max_tokens, model="m", seed=1, stop=stop
    )


def test_tokens_are_made_as_they_are_read() -> None:
    """The first tokens of a 2^31-token request come without making the others (or hanging)."""
    first = list(itertools.islice(iter_mock_tokens(_request(2**31 - 1)), 5))
    assert first == mock_tokens(_request(5))


def _full_search(request: GenerateRequest) -> list[str]:
    """The former way: search the whole text for every stop after every token."""
    rng = random.Random(determinism_seed(request))
    tokens: list[str] = []
    text = ""
    for i in range(request.max_tokens):
        piece = rng.choice(_VOCAB)
        token = piece if i == 0 else " " + piece
        text += token
        if any(stop in text for stop in request.stop):
            break
        tokens.append(token)
    return tokens


def test_stop_sequences_end_the_text_where_a_full_search_did() -> None:
    """Searching only the text's tail finds the same stops, spanning tokens or not."""
    for stop in ("e s", "in", "ate q", "zzz", "n", "l r", " t"):
        for other in ((), ("ow ",)):
            request = _request(300, stop=(stop, *other))
            assert _full_search(request) == mock_tokens(request), stop


async def test_a_fast_long_stream_leaves_the_loop_to_others() -> None:
    """At a pace the loop cannot keep up with, other tasks still run while tokens are made."""
    config = MockEngineConfig.model_validate({"ttft_ms": 0, "tokens_per_s": 1_000_000_000})
    engine = MockEngine(config, slots=1, model="m")
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    seen = 0
    async for event in engine.submit(_request(20_000)):
        seen += len(event.texts) if event.kind == "tokens" else 0
    other.cancel()
    assert 20_000 == seen
    assert turns >= 20_000 // 64
