"""Simulated engines that speak the real wire protocols, on real loopback HTTP ports.

Each fake is one small Starlette app under uvicorn, faithful to ENGINE_PROTOCOLS.md in paths,
fields, framing, status codes and metric names, with deterministic output per seed, a
configurable pace and switchable faults (see ``Behaviour``). None of them is inference; each
says "simulated" wherever its protocol has room for it.

In tests::

    async with start_fake("llamacpp", behaviour=Behaviour(tokens_per_s=200)) as fake:
        ... fake.url ... fake.requests[-1].closed_early ...

From a shell: ``python -m llama_orch.testing.fake_engines llamacpp --port 0`` prints the URL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from llama_orch.testing.fake_engines._server import Behaviour, FakeEngine, RequestRecord
from llama_orch.testing.fake_engines._tokens import VOCAB, Generation, generate, prompt_tokens
from llama_orch.testing.fake_engines.llamacpp import FakeLlamaCpp
from llama_orch.testing.fake_engines.openai_compat import FakeOpenAI, FakeVllm
from llama_orch.testing.fake_engines.tgi import FakeTgi
from llama_orch.testing.fake_engines.triton import FakeTriton

FAKES: dict[str, type[FakeEngine]] = {
    "llamacpp": FakeLlamaCpp,
    "vllm": FakeVllm,
    "tgi": FakeTgi,
    "triton": FakeTriton,
    "openai": FakeOpenAI,
}


@contextlib.asynccontextmanager
async def start_fake(kind: str, **options: Any) -> AsyncIterator[FakeEngine]:
    """Start the fake for ``kind`` on an ephemeral loopback port; stop it on exit."""
    fake = FAKES[kind](**options)
    async with fake:
        yield fake


__all__ = [
    "FAKES",
    "VOCAB",
    "Behaviour",
    "FakeEngine",
    "FakeLlamaCpp",
    "FakeOpenAI",
    "FakeTgi",
    "FakeTriton",
    "FakeVllm",
    "Generation",
    "RequestRecord",
    "generate",
    "prompt_tokens",
    "start_fake",
]
