"""Embedding and rerank through each engine's native routes, against the fake engines: the
``openai`` SDK through llama-orch gets exactly what the engine answers directly, in order across
split batches, and each engine's refusals come back as clear errors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError

from llama_orch.testing.fake_engines import FakeEngine, start_fake
from tests.e2e.test_engines import ENV, UPSTREAM_KEY, engine_pool, fake_options
from tests.support.server import RunningServer, config_of, running_server

EMBED_KINDS = ["llamacpp", "vllm", "openai", "tgi"]
RERANK_KINDS = ["llamacpp", "vllm", "tgi"]
WORKLOADS = ["completion", "embedding", "rerank"]


def _fake_options(kind: str) -> dict[str, Any]:
    options = fake_options(kind)
    if kind == "llamacpp":
        options.update(embeddings=True, reranking=True)
    return options


@contextlib.asynccontextmanager
async def stack(
    kind: str, **pool: Any
) -> AsyncIterator[tuple[FakeEngine, RunningServer, openai.AsyncOpenAI]]:
    async with start_fake(kind, **_fake_options(kind)) as fake:
        workloads = WORKLOADS if kind in RERANK_KINDS else ["completion", "embedding"]
        config = config_of(engine_pool(kind, fake, supported_workloads=workloads, **pool))
        async with (
            running_server(config, ENV) as srv,
            openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="unused") as client,
        ):
            yield fake, srv, client


async def direct_vectors(kind: str, fake: FakeEngine, texts: list[str]) -> list[list[float]]:
    """What the engine itself answers, on its own OpenAI-shaped route."""
    headers = {"authorization": f"Bearer {UPSTREAM_KEY}"} if kind == "openai" else {}
    async with httpx.AsyncClient(base_url=fake.url, headers=headers) as client:
        if kind == "tgi":
            answer = await client.post("/embed", json={"inputs": texts})
            rows: list[list[float]] = answer.json()
            return rows
        answer = await client.post(
            "/v1/embeddings", json={"model": fake.model, "input": texts, "encoding_format": "float"}
        )
        return [d["embedding"] for d in answer.json()["data"]]


@pytest.mark.parametrize("kind", EMBED_KINDS)
async def test_sdk_vectors_equal_the_engines_in_order(kind: str) -> None:
    """19 texts in engine batches of 4: five engine calls, the vectors the engine gives, in
    input order, for the SDK's base64 default and for floats."""
    texts = [f"passage {i} about rivers" for i in range(19)]
    async with stack(kind, embedding_batch=4) as (fake, _srv, client):
        packed = await client.embeddings.create(model=fake.model, input=texts)
        floats = await client.embeddings.create(
            model=fake.model, input=texts, encoding_format="float"
        )
        direct = await direct_vectors(kind, fake, texts)
        sizes = [len(r.body.get("input") or r.body.get("inputs")) for r in fake.requests[:5]]
    assert [4, 4, 4, 4, 3] == sizes
    assert direct == [d.embedding for d in floats.data]
    assert direct == [d.embedding for d in packed.data]
    assert packed.usage.prompt_tokens > 0


@pytest.mark.parametrize("kind", RERANK_KINDS)
async def test_rerank_sorted_and_complete(kind: str) -> None:
    docs = [f"document {i}" for i in range(7)]
    async with stack(kind, embedding_batch=3) as (fake, srv, _client):
        answer = await srv.client.post(
            "/v1/rerank", json={"model": fake.model, "query": "which one", "documents": docs}
        )
    assert 200 == answer.status_code, answer.text
    results = answer.json()["results"]
    assert list(range(7)) == sorted(r["index"] for r in results)
    scores = [r["relevance_score"] for r in results]
    assert sorted(scores, reverse=True) == scores


async def test_openai_pool_refuses_rerank_clearly() -> None:
    """OpenAI has no rerank route: a pool listing rerank is refused at load, and a rerank
    request to one that does not list it is a clear 400."""
    async with start_fake("openai", **_fake_options("openai")) as fake:
        with pytest.raises(ValidationError, match=r"supported_workloads lists \['rerank'\]"):
            config_of(engine_pool("openai", fake, supported_workloads=WORKLOADS))
        config = config_of(
            engine_pool("openai", fake, supported_workloads=["completion", "embedding"])
        )
        async with running_server(config, ENV) as srv:
            answer = await srv.client.post(
                "/v1/rerank", json={"model": fake.model, "query": "q", "documents": ["a"]}
            )
    assert 400 == answer.status_code
    assert "not rerank" in answer.json()["error"]["message"]


async def test_llamacpp_without_embedding_mode_is_a_clear_error() -> None:
    """A llama-server started without --embeddings answers 501; the caller learns why."""
    async with start_fake("llamacpp") as fake:
        config = config_of(engine_pool("llamacpp", fake, supported_workloads=WORKLOADS))
        async with (
            running_server(config, ENV) as srv,
            openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="unused") as client,
        ):
            with pytest.raises(openai.APIStatusError) as caught:
                await client.with_options(max_retries=0).embeddings.create(
                    model=fake.model, input="x"
                )
    assert "--embeddings" in caught.value.message


async def test_tei_batch_limit_is_respected_by_batching() -> None:
    """A TEI server with --max-client-batch-size 8 still serves 20 texts: llama-orch sends
    batches the pool allows (embedding_batch 8)."""
    async with start_fake("tgi", max_client_batch_size=8) as fake:
        config = config_of(
            engine_pool("tgi", fake, supported_workloads=WORKLOADS, embedding_batch=8)
        )
        async with (
            running_server(config, ENV) as srv,
            openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="unused") as client,
        ):
            done = await client.embeddings.create(model=fake.model, input=["t"] * 20)
    assert 20 == len(done.data)
