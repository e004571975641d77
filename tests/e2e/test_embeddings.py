"""Embedding and rerank workloads end to end on mock pools: the task API (stream and
``Prefer: wait``), the OpenAI SDK's ``embeddings.create``, ``/v1/rerank``, Ollama's embed routes,
bad input, batching and determinism."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from llama_orch.contracts.events import PAYLOADS
from llama_orch.core.embedding import decode_base64, hashed_vector, l2_normalize
from llama_orch.testing.fake_engines import Behaviour, start_fake
from tests.e2e.test_engines import ENV, engine_pool, wait_until
from tests.support.server import RunningServer, config_of, mock_pool, running_server, task_body

WORKLOADS = ["completion", "embedding", "rerank"]
DIMS = 32
SDK = openai.AsyncOpenAI


def embed_pool(pool_id: str = "p0", **overrides: Any) -> dict[str, Any]:
    return mock_pool(pool_id, supported_workloads=WORKLOADS, **overrides)


def embed_body(texts: list[str], **overrides: Any) -> dict[str, Any]:
    body = task_body(workload="embedding", inputs=texts, **overrides)
    del body["prompt"], body["seed"]
    return body


def expected(text: str) -> list[float]:
    return list(hashed_vector("m0", text, DIMS))


@contextlib.asynccontextmanager
async def server(
    *pools: dict[str, Any], top: dict[str, Any] | None = None
) -> AsyncIterator[tuple[RunningServer, SDK]]:
    config = config_of(*(pools or (embed_pool(),)), **(top or {}))
    async with (
        running_server(config) as srv,
        SDK(base_url=srv.url + "/v1", api_key="unused") as client,
    ):
        yield srv, client


class TestTaskApi:
    async def test_stream_is_started_then_end_with_result(self) -> None:
        """An embedding task streams ``started`` then ``end`` whose result holds the vectors in
        input order, split over engine batches of 3."""
        texts = [f"text {i}" for i in range(8)]
        body = embed_body(texts)
        async with server(embed_pool(embedding_batch=3)) as (srv, _):
            admitted = await srv.client.post("/v1/tasks", json=body)
            frames = await srv.stream(body["task_id"])
        assert 202 == admitted.status_code
        assert ["started", "end"] == [e for e, _ in frames if e != "metrics"]
        end = frames[-1][1]
        PAYLOADS["end"].model_validate(end)
        assert 0 == end["tokens_out"] and end["tokens_in"] > 0
        assert [expected(t) for t in texts] == end["result"]["embeddings"]
        assert "float" == end["result"]["encoding_format"]

    async def test_prefer_wait_answers_the_outcome(self) -> None:
        """``Prefer: wait`` answers 200 with the result; without it the answer stays 202."""
        async with server() as (srv, _):
            waited = await srv.client.post(
                "/v1/tasks",
                json=embed_body(["a", "b"], encoding_format="base64", dimensions=8),
                headers={"Prefer": "wait"},
            )
            rerank = task_body(workload="rerank", query="q", inputs=["x", "y", "z"])
            del rerank["prompt"], rerank["seed"]
            ranked = await srv.client.post("/v1/tasks", json=rerank, headers={"Prefer": "wait"})
            chat = await srv.client.post(
                "/v1/tasks", json=task_body(max_tokens=4), headers={"Prefer": "wait"}
            )
        assert 200 == waited.status_code and "wait" == waited.headers["preference-applied"]
        result = waited.json()["result"]
        vectors = [decode_base64(v) for v in result["embeddings"]]
        assert 8 == result["dimensions"]
        want = l2_normalize(expected("a")[:8])
        assert pytest.approx(want, abs=1e-6) == vectors[0]
        results = ranked.json()["result"]["results"]
        assert [0, 1, 2] == sorted(r["index"] for r in results)
        scores = [r["score"] for r in results]
        assert sorted(scores, reverse=True) == scores
        assert "done" == chat.json()["state"] and chat.json()["text"]

    @pytest.mark.parametrize(
        ("overrides", "needle"),
        [
            ({"inputs": []}, "non-empty list"),
            ({"inputs": ["ok", ""]}, "inputs[1] is empty"),
            ({"inputs": ["x"] * 5000}, "inputs"),
            ({"inputs": ["word " * 5000]}, "over the context"),
            ({"inputs": ["a"], "prompt": "p"}, "prompt is not used"),
            ({"inputs": [1]}, "inputs.0"),
        ],
    )
    async def test_bad_input_is_a_clear_400(self, overrides: dict[str, Any], needle: str) -> None:
        async with server() as (srv, _):
            body = embed_body(["placeholder"])
            body.update(overrides)
            answer = await srv.client.post("/v1/tasks", json=body)
        assert 400 == answer.status_code
        assert "INVALID_PARAMS" == answer.json()["code"]
        assert needle in answer.json()["message"]

    async def test_pool_without_the_workload_refuses(self) -> None:
        """A pool that does not list embedding in supported_workloads is never chosen."""
        async with server(mock_pool()) as (srv, _):
            answer = await srv.client.post("/v1/tasks", json=embed_body(["a"]))
        assert 400 == answer.status_code
        assert "supported_workloads" in answer.json()["message"]


class TestOpenAISdk:
    async def test_embeddings_create_in_order_across_batches(self) -> None:
        """The SDK's default (base64) and float forms both give the engine's vectors, in order,
        with a request split into engine batches of 5."""
        texts = [f"document number {i}" for i in range(23)]
        async with server(embed_pool(embedding_batch=5)) as (_srv, client):
            packed = await client.embeddings.create(model="m0", input=texts)
            floats = await client.embeddings.create(
                model="m0", input=texts, encoding_format="float"
            )
            one = await client.embeddings.create(model="m0", input="single")
        assert list(range(23)) == [d.index for d in packed.data]
        for i, text in enumerate(texts):
            assert pytest.approx(expected(text), abs=1e-7) == packed.data[i].embedding
            assert expected(text) == floats.data[i].embedding
        assert packed.usage.prompt_tokens == packed.usage.total_tokens > 0
        assert expected("single") == pytest.approx(one.data[0].embedding, abs=1e-7)

    async def test_dimensions_shorten(self) -> None:
        """Shortened vectors are float32 values, so the float list and the SDK's base64 form
        carry the very same numbers, as unshortened ones do."""
        async with server() as (_srv, client):
            short = await client.embeddings.create(
                model="m0", input="x", dimensions=4, encoding_format="float"
            )
            packed = await client.embeddings.create(model="m0", input="x", dimensions=4)
        assert pytest.approx(l2_normalize(expected("x")[:4])) == short.data[0].embedding
        assert short.data[0].embedding == packed.data[0].embedding

    async def test_dimensions_above_the_model_are_refused(self) -> None:
        """Asking for more values than the model's vectors have is a 400 that says how many
        there are, not a silently shorter answer."""
        native = len(expected("x"))
        async with server() as (_srv, client):
            with pytest.raises(openai.BadRequestError) as info:
                await client.embeddings.create(
                    model="m0", input="x", dimensions=native + 1, encoding_format="float"
                )
            whole = await client.embeddings.create(
                model="m0", input="x", dimensions=native, encoding_format="float"
            )
        assert f"embeddings have {native}; ask for at most {native}" in str(info.value)
        assert expected("x") == whole.data[0].embedding

    @pytest.mark.parametrize(
        ("payload", "param"),
        [
            ({"input": []}, "input"),
            ({"input": ["x"] * 100_000}, "input"),
            ({"input": ["a", 3]}, "input"),
            ({"input": "w " * 10_000}, None),
            ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ],
    )
    async def test_bad_input_is_bad_request(
        self, payload: dict[str, Any], param: str | None
    ) -> None:
        """Each refusal is the SDK's BadRequestError with OpenAI's error body."""
        async with server() as (_srv, client):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.post(
                    "/embeddings", body={"model": "m0", **payload}, cast_to=httpx.Response
                )
        assert param == caught.value.param
        assert "invalid_request_error" == caught.value.type

    async def test_rerank_sorted_complete_and_cut(self) -> None:
        docs = ["alpha", "beta", "gamma", "delta"]
        async with server(embed_pool(embedding_batch=3)) as (srv, _):
            full = await srv.client.post(
                "/v1/rerank", json={"model": "m0", "query": "q", "documents": docs}
            )
            top = await srv.client.post(
                "/v1/rerank", json={"model": "m0", "query": "q", "documents": docs, "top_n": 2}
            )
            empty = await srv.client.post(
                "/v1/rerank", json={"model": "m0", "query": "q", "documents": []}
            )
        results = full.json()["results"]
        assert [0, 1, 2, 3] == sorted(r["index"] for r in results)
        scores = [r["relevance_score"] for r in results]
        assert sorted(scores, reverse=True) == scores
        assert all(r["document"]["text"] == docs[r["index"]] for r in results)
        assert results[:2] == top.json()["results"]
        assert 400 == empty.status_code and "documents" == empty.json()["error"]["param"]

    async def test_bare_rerank_route_is_the_same_front_door(self) -> None:
        """Jina/Cohere-style clients post to ``/rerank``: same answer, auth and error shapes."""
        docs = ["alpha", "beta", "gamma"]
        body = {"model": "m0", "query": "q", "documents": docs, "top_n": 2}
        config = config_of(embed_pool())
        async with running_server(config, {"AUTH_TOKEN": "sekret"}) as srv:
            auth = {"Authorization": "Bearer sekret"}
            bare = await srv.client.post("/rerank", json=body, headers=auth)
            versioned = await srv.client.post("/v1/rerank", json=body, headers=auth)
            no_token = await srv.client.post("/rerank", json=body)
            unknown = await srv.client.post("/rerank", json={**body, "model": "x"}, headers=auth)
            bad = await srv.client.post("/rerank", json={**body, "documents": []}, headers=auth)
            wrong_method = await srv.client.get("/rerank", headers=auth)
        assert 200 == bare.status_code
        assert versioned.json()["results"] == bare.json()["results"]
        assert 2 == len(bare.json()["results"])
        assert 401 == no_token.status_code
        assert "authentication_error" == no_token.json()["error"]["type"]
        assert 404 == unknown.status_code and "model_not_found" == unknown.json()["error"]["code"]
        assert 400 == bad.status_code and "documents" == bad.json()["error"]["param"]
        assert 405 == wrong_method.status_code and "POST" in wrong_method.headers["allow"]
        assert "message" in wrong_method.json()["error"]

    async def test_full_queue_is_429_with_retry_headers(self) -> None:
        """The same 429 behaviour as the chat routes: the queue's refusal with retry-after-ms."""
        pool = embed_pool(queue={"capacity": 1}, mock={"embed_batch_ms": 2000})
        async with server(pool) as (srv, _):
            first = srv.client.post("/v1/embeddings", json={"model": "m0", "input": "a"})
            running = asyncio.ensure_future(first)
            await _until_running(srv)
            queued = asyncio.ensure_future(
                srv.client.post("/v1/embeddings", json={"model": "m0", "input": "b"})
            )
            await _until_queued(srv, 1)
            refused = await srv.client.post("/v1/embeddings", json={"model": "m0", "input": "c"})
            service = srv.deps.service
            for task in service.list_tasks():
                service.cancel(task.task_id)
            ended = [(await running).status_code, (await queued).status_code]
        assert [499, 499] == ended
        assert 429 == refused.status_code
        assert "retry-after-ms" in refused.headers
        assert "rate_limit_error" == refused.json()["error"]["type"]


async def _until_running(srv: RunningServer) -> None:
    service = srv.deps.service
    await wait_until(lambda: service.pool_status("p0").running == 1, "a task runs")


async def _until_queued(srv: RunningServer, count: int) -> None:
    service = srv.deps.service
    await wait_until(lambda: service.pool_status("p0").queue_depth >= count, "queued")


class TestOllama:
    async def test_embed_and_legacy_embeddings(self) -> None:
        """``/api/embed`` gives unit vectors for each input; ``/api/embeddings`` the one vector
        as the engine gave it; an empty input is an empty answer."""
        async with server() as (srv, _):
            client = ollama.AsyncClient(host=srv.url)
            try:
                many = await client.embed(model="m0", input=["a", "b"])
                legacy = await client.embeddings(model="m0", prompt="a")
            finally:
                await client.close()
            empty = await srv.client.post("/api/embed", json={"model": "m0", "input": []})
            bad = await srv.client.post("/api/embed", json={"model": "m0", "input": ["a", 1]})
        assert [pytest.approx(expected(t), abs=1e-6) for t in ("a", "b")] == [
            list(v) for v in many.embeddings
        ]
        assert expected("a") == list(legacy.embedding)
        assert [] == empty.json()["embeddings"]
        assert 400 == bad.status_code and "input[1]" in bad.json()["error"]


async def test_embedding_tasks_are_not_first_tokens() -> None:
    """Embedding and rerank batches are not first tokens: they stay out of
    ``latency_first_token_ms``/``latency_decode_ms`` and out of the speed estimate that
    predicts chat tasks' starts; a completion on the same pool still counts."""
    async with server(embed_pool(embedding_batch=2)) as (srv, _):
        embedded = await srv.client.post(
            "/v1/embeddings", json={"model": "m0", "input": ["a", "b", "c", "d", "e"]}
        )
        ranked = await srv.client.post(
            "/v1/rerank", json={"model": "m0", "query": "q", "documents": ["x", "y", "z"]}
        )
        assert [200, 200] == [embedded.status_code, ranked.status_code]
        perf = srv.deps.service._dispatcher.lanes["p0"].perf_of("r0")
        after_embeddings = (await _latency_counts(srv), perf.samples)
        chat = task_body(max_tokens=3)
        assert 202 == (await srv.submit(chat)).status_code
        await srv.stream(chat["task_id"])
        after_chat = (await _latency_counts(srv), perf.samples)
    assert ((0, 0), 0) == after_embeddings
    assert ((1, 1), 1) == after_chat


async def _latency_counts(srv: RunningServer) -> tuple[int, int]:
    """How many tasks ``latency_first_token_ms`` and ``latency_decode_ms`` counted."""
    text = (await srv.client.get("/metrics")).text
    totals = []
    for name in ("latency_first_token_ms_count", "latency_decode_ms_count"):
        lines = [line for line in text.splitlines() if line.startswith(name + "{")]
        totals.append(sum(int(float(line.rsplit(" ", 1)[1])) for line in lines))
    return totals[0], totals[1]


async def test_same_bytes_across_replicas() -> None:
    """Determinism: the same input gives the same vector bytes on every replica."""
    slow = {"embed_batch_ms": 100}
    pools = (
        embed_pool("p0", replicas=2, slots=1, mock=slow),
        embed_pool("p1", devices=[1], mock=slow),
    )
    body = {"model": "m0", "input": ["same text"], "encoding_format": "base64"}
    async with server(*pools) as (srv, _):
        answers = await asyncio.gather(
            *(srv.client.post("/v1/embeddings", json=body) for _ in range(6))
        )
        service = srv.deps.service
        replicas = {(t.pool_id, t.replica_id) for t in service.list_tasks()}
    assert len(replicas) >= 2
    assert 1 == len({a.json()["data"][0]["embedding"] for a in answers})


class TestSchedulingAndBudgets:
    async def test_cancel_stops_further_batches(self) -> None:
        """Ten engine calls of 2 texts each; a cancel during the first call ends the task with
        ``canceled`` and no further call is sent."""
        async with start_fake("vllm", behaviour=Behaviour(ttft_ms=300)) as fake:
            pool = engine_pool("vllm", fake, supported_workloads=WORKLOADS, embedding_batch=2)
            async with running_server(config_of(pool), ENV) as srv:
                body = embed_body([f"t{i}" for i in range(20)], model=fake.model, engine="vllm")
                assert 202 == (await srv.submit(body)).status_code
                await wait_until(lambda: len(fake.requests) == 1, "the first engine call")
                await srv.client.post(f"/v1/tasks/{body['task_id']}/cancel")
                frames = await srv.stream(body["task_id"])
                service = srv.deps.service
                await wait_until(lambda: service.pool_status(pool["id"]).running == 0, "freed")
                calls = len(fake.requests)
        assert frames[-1][1].get("canceled") is True
        assert "result" not in frames[-1][1]
        assert 1 == calls

    async def test_a_client_leaving_a_long_batch_cancels_it(self) -> None:
        """An OpenAI client that goes away during the first of ten engine calls cancels its
        task: no further call is sent, the task ends canceled and the slot is free."""
        async with start_fake("vllm", behaviour=Behaviour(ttft_ms=300)) as fake:
            pool = engine_pool("vllm", fake, supported_workloads=WORKLOADS, embedding_batch=2)
            async with running_server(config_of(pool), ENV) as srv:
                body = {"model": fake.model, "input": [f"t{i}" for i in range(20)]}
                request = asyncio.create_task(srv.client.post("/v1/embeddings", json=body))
                await wait_until(lambda: len(fake.requests) == 1, "the first engine call")
                request.cancel()  # closes the client's connection
                with contextlib.suppress(asyncio.CancelledError):
                    await request
                service = srv.deps.service
                await wait_until(lambda: service.pool_status(pool["id"]).running == 0, "freed")
                calls = len(fake.requests)
                (task,) = service.list_tasks()
                ended = await srv.stream(task.task_id)
        assert 1 == calls
        assert ended[-1][1].get("canceled") is True, ended[-1]

    async def test_input_tokens_count_against_the_session_budget(self) -> None:
        """The token budget is charged the tokens read; a request larger than what is left is
        refused before it is queued."""
        session = "6d8a3c4e-0a7b-4d1e-9f7c-2b5a1c9e8d70"
        config = config_of(embed_pool(), budgets={"tokens": 40})
        async with running_server(config) as srv:
            body = embed_body(["x" * 30] * 3, session_id=session)
            first = await srv.submit(body)
            assert 202 == first.status_code, first.text
            await srv.stream(body["task_id"])
            info = (await srv.client.get(f"/v1/sessions/{session}")).json()
            refused = await srv.submit(embed_body(["y" * 200], session_id=session))
        assert 40 - 30 == info["tokens_budget_remaining"]
        assert 429 == refused.status_code
        assert "the texts in inputs are about 67 tokens" in refused.json()["message"]
        assert "session-budget" == refused.json()["policy_label"]

    @pytest.mark.parametrize(
        ("path", "body", "named"),
        [
            ("/v1/embeddings", {"input": ["y" * 200]}, "the texts in input are"),
            ("/v1/rerank", {"query": "q", "documents": ["y" * 200]}, "in query and documents"),
            ("/api/embed", {"input": "y" * 200}, "the texts in input are"),
            ("/api/embeddings", {"prompt": "y" * 200}, "the texts in prompt are"),
        ],
        ids=["openai-embeddings", "rerank", "ollama-embed", "ollama-embeddings"],
    )
    async def test_a_front_door_budget_refusal_names_the_field_sent(
        self, path: str, body: dict[str, Any], named: str
    ) -> None:
        """A front door's request larger than its session's token budget is refused naming the
        field its client sent (input, prompt, query and documents), not the task API's."""
        headers = {"X-Session-Id": "4e1c7b9a-2d3f-4a5b-8c6d-7e8f9a0b1c2d"}
        async with server(embed_pool(), top={"budgets": {"tokens": 10}}) as (srv, _):
            refused = await srv.client.post(path, json={"model": "m0", **body}, headers=headers)
        assert 429 == refused.status_code, refused.text
        message = str(refused.json())
        assert named in message
        assert "inputs" not in message

    async def test_a_text_over_the_context_is_named_as_its_client_sent_it(self) -> None:
        """A text longer than the model's context is a 400 naming the field and position the
        client sent (``input[1]``, ``documents[2]``, ``prompt``), not the task API's ``inputs``."""
        long = "w " * 10_000
        requests = [
            ("/v1/embeddings", {"input": ["ok", long]}, "input[1] is about"),
            ("/v1/rerank", {"query": "q", "documents": ["a", "b", long]}, "documents[2] is about"),
            ("/api/embed", {"input": long}, "input is about"),
            ("/api/embeddings", {"prompt": long}, "prompt is about"),
        ]
        async with server() as (srv, _):
            answers = [
                (await srv.client.post(path, json={"model": "m0", **body}), named)
                for path, body, named in requests
            ]
        for answer, named in answers:
            assert 400 == answer.status_code, answer.text
            message = str(answer.json())
            assert named in message, message
            assert "over the context of" in message, message
            assert "inputs" not in message, message

    async def test_capabilities_list_each_pools_workloads(self) -> None:
        async with server(embed_pool(), mock_pool("p1", "m1", devices=[1])) as (srv, _):
            caps = (await srv.client.get("/v1/capabilities")).json()
        by_pool = {p["pool_id"]: p["supported_workloads"] for p in caps["pools"]}
        assert {"p0": WORKLOADS, "p1": ["completion"]} == by_pool
        assert WORKLOADS == caps["engines"][0]["supported_workloads"]


async def test_prefer_wait_answers_a_failure_with_its_envelope() -> None:
    """A task that fails after admission answers its error envelope and status."""
    async with server(embed_pool(mock={"fail_at_token": 0})) as (srv, _):
        answer = await srv.client.post(
            "/v1/tasks", json=embed_body(["a"]), headers={"Prefer": "wait"}
        )
    assert 500 == answer.status_code
    assert "INTERNAL" == answer.json()["code"]
    assert "simulated engine failure" in answer.json()["message"]
