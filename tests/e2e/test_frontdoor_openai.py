"""The OpenAI-compatible front door, driven by the official ``openai`` SDK against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ollama
import openai
import pytest
from prometheus_client import Counter

from llama_orch.dispatch.service import SERVER_STOPS
from llama_orch.testing.fake_engines import Behaviour, generate, start_fake
from tests.e2e.test_engines import ENV, engine_pool, engine_stack, fake_options, wait_until
from tests.support.frontdoor import MESSAGES, chat_prompt, mock_text
from tests.support.server import RunningServer, config_of, mock_pool, running_server


def sdk(srv: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="unused")


@contextlib.asynccontextmanager
async def mock_server(**pool: Any) -> AsyncIterator[tuple[RunningServer, openai.AsyncOpenAI]]:
    async with running_server(config_of(mock_pool(**pool))) as srv, sdk(srv) as client:
        yield srv, client


class TestModels:
    async def test_list_and_retrieve(self) -> None:
        """/v1/models lists each pool's model; an unknown id is the SDK's NotFoundError."""
        async with mock_server() as (_srv, client):
            page = await client.models.list()
            assert ["m0"] == [m.id for m in page.data]
            assert "m0" == (await client.models.retrieve("m0")).id
            with pytest.raises(openai.NotFoundError) as caught:
                await client.models.retrieve("org/nope")
            assert "model_not_found" == caught.value.code

    async def test_a_model_on_two_pools_is_listed_once(self) -> None:
        """Pools serving the same model make one entry; a pool id names its model."""
        config = config_of(mock_pool("p0"), mock_pool("p1", devices=[1]))
        async with running_server(config) as srv, sdk(srv) as client:
            page = await client.models.list()
            by_pool = await client.models.retrieve("p1")
        assert ["m0"] == [m.id for m in page.data]
        assert "m0" == by_pool.id


async def test_same_bearer_auth() -> None:
    """The front doors sit behind the server's bearer token, like every other route, and refuse
    a caller in its own API's shape: the SDKs read the message and the code as theirs."""
    token = "orch-test-token-0123456789abcdef0123"
    async with running_server(config_of(mock_pool()), {"AUTH_TOKEN": token}) as srv:
        async with openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="wrong") as bad:
            with pytest.raises(openai.AuthenticationError) as wrong:
                await bad.models.list()
        async with openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key=token) as good:
            assert ["m0"] == [m.id for m in (await good.models.list()).data]
        ollama_client = ollama.AsyncClient(host=srv.url)
        try:
            with pytest.raises(ollama.ResponseError) as refused:
                await ollama_client.list()
        finally:
            await ollama_client.close()
        missing = await srv.client.post("/v1/chat/completions", json={})
        task_api = await srv.client.post("/v1/tasks", json={})
    assert ("bad_token", "authentication_error") == (wrong.value.code, wrong.value.type)
    assert "token" in wrong.value.message and "{" not in wrong.value.message
    assert (401, "this server requires a bearer token") == (
        refused.value.status_code,
        refused.value.error,
    )
    assert 401 == missing.status_code
    assert 'Bearer realm="llama-orch"' == missing.headers["www-authenticate"]
    assert missing.headers["x-correlation-id"]
    assert "missing_token" == missing.json()["error"]["code"]
    # The task API keeps its own envelope.
    assert ("MISSING_TOKEN", 40101) == (task_api.json()["code"], task_api.json()["code_id"])


async def test_refusals_before_a_handler_come_in_the_callers_shape() -> None:
    """A method a front-door route does not serve, an Ollama route this server does not have
    (``/api/pull``), a foreign web origin and a compressed body answer in the peer API's
    error shape; the task API's own 404 stays."""
    async with running_server(config_of(mock_pool())) as srv:
        wrong_method = await srv.client.delete("/v1/chat/completions")
        ollama_client = ollama.AsyncClient(host=srv.url)
        try:
            with pytest.raises(ollama.ResponseError) as pull:
                await ollama_client.pull("m0")
        finally:
            await ollama_client.close()
        elsewhere = await srv.client.get("/v1/nothing-here")
        foreign = await srv.client.post(
            "/v1/chat/completions", json={}, headers={"Origin": "https://elsewhere.example"}
        )
        gzipped = await srv.client.post(
            "/api/chat", content=b"\x1f\x8b", headers={"Content-Encoding": "gzip"}
        )
    assert (403, "permission_error") == (foreign.status_code, foreign.json()["error"]["type"])
    assert "https://elsewhere.example" in foreign.json()["error"]["message"]
    assert foreign.headers["x-correlation-id"]
    assert (415, "identity") == (gzipped.status_code, gzipped.headers["accept-encoding"])
    assert "gzip" in gzipped.json()["error"]
    assert (405, "POST") == (wrong_method.status_code, wrong_method.headers["allow"])
    error = wrong_method.json()["error"]
    assert ("invalid_request_error", "invalid_params") == (error["type"], error["code"])
    assert "DELETE is not served on /v1/chat/completions" in error["message"]
    assert 404 == pull.value.status_code and "no such endpoint" in pull.value.error
    assert (404, "NOT_FOUND") == (elsewhere.status_code, elsewhere.json()["code"])


class TestChatOnMock:
    async def test_non_streaming_text_and_usage(self) -> None:
        """A chat answer is the engine's output for the templated prompt, with usage counts."""
        async with mock_server() as (_srv, client):
            reply = await client.chat.completions.create(
                model="m0",
                messages=MESSAGES,
                max_tokens=12,
                seed=7,  # type: ignore[arg-type]
            )
        assert mock_text(chat_prompt(MESSAGES), 12) == reply.choices[0].message.content
        assert "length" == reply.choices[0].finish_reason
        assert reply.usage is not None
        assert 12 == reply.usage.completion_tokens
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12

    async def test_streaming_with_usage(self) -> None:
        """Streamed deltas join to the same text; include_usage adds the usage chunk."""
        async with mock_server() as (_srv, client):
            stream = await client.chat.completions.create(
                model="m0",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_completion_tokens=20,
                seed=7,
                temperature=0.5,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        expected = mock_text(chat_prompt(MESSAGES), 20, temperature=0.5)
        assert expected == text
        assert "assistant" == chunks[0].choices[0].delta.role
        assert "length" == [c for c in chunks if c.choices][-1].choices[0].finish_reason
        assert chunks[-1].usage is not None
        assert 20 == chunks[-1].usage.completion_tokens

    async def test_sync_client_completions(self) -> None:
        """The sync SDK (in a thread) gets the legacy completion, streamed and not."""
        async with mock_server() as (srv, _client):

            def both() -> tuple[str, str]:
                with openai.OpenAI(base_url=srv.url + "/v1", api_key="unused") as client:
                    return complete(client)

            def complete(client: openai.OpenAI) -> tuple[str, str]:
                whole = client.completions.create(model="m0", prompt="hi", max_tokens=8, seed=3)
                streamed = client.completions.create(
                    model="m0", prompt="hi", max_tokens=8, seed=3, stream=True
                )
                return whole.choices[0].text, "".join(c.choices[0].text for c in streamed)

            whole, streamed = await asyncio.to_thread(both)
        assert mock_text("hi", 8, seed=3) == whole
        assert whole == streamed

    async def test_default_max_tokens_of_legacy_completions(self) -> None:
        """Without max_tokens the legacy route writes 16 tokens, as OpenAI's does."""
        async with mock_server() as (_srv, client):
            reply = await client.completions.create(model="m0", prompt="hi")
        assert reply.usage is not None
        assert 16 == reply.usage.completion_tokens

    async def test_response_headers(self) -> None:
        """Every answer names its task, queue position, predicted start and correlation ID."""
        async with mock_server() as (srv, client):
            raw = await client.chat.completions.with_raw_response.create(
                model="m0",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=4,
                extra_headers={"X-Correlation-Id": "corr-1", "X-Priority": "batch"},
            )
            task = srv.task(raw.headers["x-task-id"])
        assert "corr-1" == raw.headers["x-correlation-id"]
        assert {"x-queue-position", "x-predicted-start-ms"} <= set(raw.headers)
        assert task is not None
        assert "batch" == task.priority.value


class TestBackpressure:
    @staticmethod
    def pool() -> dict[str, Any]:
        # Slow enough that the running task still holds its slot when the next request
        # arrives, even on a loaded machine.
        return {"mock": {"tokens_per_s": 10.0}, "queue": {"capacity": 1}}

    async def fill(self, srv: RunningServer, client: openai.AsyncOpenAI) -> list[asyncio.Task[Any]]:
        """One running and one queued task; the queue is then full."""
        service = srv.deps.service
        busy = []
        for running, queued in ((1, 0), (1, 1)):
            busy.append(
                asyncio.create_task(
                    client.chat.completions.create(
                        model="m0",
                        messages=MESSAGES,  # type: ignore[arg-type]
                        max_tokens=8,
                    )
                )
            )
            await wait_until(
                lambda r=running, q=queued: (
                    (
                        service.pool_status("p0").running,
                        service.pool_status("p0").queue_depth,
                    )
                    == (r, q)
                ),
                "a running task and a full queue",
            )
        return busy

    async def test_full_queue_is_rate_limit_error(self) -> None:
        """A full queue answers 429 in OpenAI's shape, with Retry-After, as RateLimitError."""
        async with mock_server(**self.pool()) as (srv, client):
            busy = await self.fill(srv, client)
            with pytest.raises(openai.RateLimitError) as caught:
                await client.with_options(max_retries=0).chat.completions.create(
                    model="m0",
                    messages=MESSAGES,  # type: ignore[arg-type]
                )
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
        headers = caught.value.response.headers
        assert int(headers["retry-after"]) >= 1
        assert int(headers["retry-after-ms"]) > 0
        assert "rate_limit_error" == caught.value.type

    async def test_sdk_retries_after_retry_after(self) -> None:
        """The SDK's retry loop waits as told and gets through once the queue drains."""
        async with mock_server(**self.pool()) as (srv, client):
            busy = await self.fill(srv, client)
            reply = await client.with_options(max_retries=10).chat.completions.create(
                model="m0",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=2,
            )
            await asyncio.gather(*busy)
            refusals = counted(srv.deps.metrics.admission_backpressure_events_total)
        assert reply.choices[0].message.content
        assert refusals >= 1

    async def test_queue_position_grows(self) -> None:
        """Streams opened one after another on a busy pool get growing queue positions."""
        async with mock_server(mock={"tokens_per_s": 20.0}) as (_srv, client):
            positions = []
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(4):
                    raw = await stack.enter_async_context(
                        client.chat.completions.with_streaming_response.create(
                            model="m0",
                            messages=MESSAGES,  # type: ignore[arg-type]
                            max_tokens=40,
                            stream=True,
                        )
                    )
                    positions.append(int(raw.headers["x-queue-position"]))
        assert positions[1:] == sorted(positions[1:])
        assert positions[1] < positions[2] < positions[3]


def counted(counter: Counter, **labels: str) -> float:
    """A counter's total over the series matching ``labels``."""
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
        and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def test_queued_stream_tells_its_position() -> None:
    """A streamed request that waits in the queue sends ': queue-position N' comments first."""
    async with mock_server(mock={"tokens_per_s": 20.0}) as (srv, client):
        body = {"model": "m0", "messages": MESSAGES, "max_tokens": 10, "stream": True}
        async with client.chat.completions.with_streaming_response.create(**body) as first:
            assert "0" == first.headers["x-queue-position"]
            async with srv.client.stream("POST", "/v1/chat/completions", json=body) as second:
                lines = []
                async for line in second.aiter_lines():
                    lines.append(line)
                    if line.startswith("data: {") and '"content":"' in line:
                        break
    assert "0" == second.headers["x-queue-position"]  # next in line, behind the running one
    assert int(second.headers["x-predicted-start-ms"]) > 0
    assert ": queue-position 0" == lines[0]


class TestCancel:
    async def test_leaving_a_whole_answer_cancels_it(self) -> None:
        """A client that gives up on a non-streamed answer cancels its task."""
        async with mock_server(mock={"tokens_per_s": 50.0}) as (srv, client):
            with pytest.raises(openai.APITimeoutError):
                await client.with_options(timeout=0.5, max_retries=0).chat.completions.create(
                    model="m0",
                    messages=MESSAGES,  # type: ignore[arg-type]
                    max_tokens=500,
                )
            await wait_until(
                lambda: counted(srv.deps.metrics.tasks_canceled_total, reason="disconnect") == 1,
                "disconnect cancel",
            )
            assert [] == [t for t in srv.deps.service.list_tasks() if not t.terminal]

    async def test_cancel_by_id_ends_the_stream_and_replays(self) -> None:
        """POST /v1/tasks/{id}/cancel stops a front-door stream; the task stream replays it."""
        async with mock_server(mock={"tokens_per_s": 50.0}) as (srv, client):
            async with client.chat.completions.with_streaming_response.create(
                model="m0",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=500,
                stream=True,
            ) as raw:
                task_id = raw.headers["x-task-id"]
                lines = raw.iter_lines()
                async for line in lines:
                    if '"content":"' in line and '"content":""' not in line:
                        break
                assert 204 == (await srv.client.post(f"/v1/tasks/{task_id}/cancel")).status_code
                rest = [line async for line in lines]
            frames = await srv.stream(task_id)
        assert any('"code":"canceled"' in line for line in rest)
        assert "end" == frames[-1][0]
        assert frames[-1][1]["canceled"] is True

    @pytest.mark.parametrize("reason", sorted(SERVER_STOPS))
    async def test_a_server_stop_is_a_retriable_error(self, reason: str) -> None:
        """A task the server stops (each of dispatch's stop reasons) ends the stream with a
        retriable error, not a final-looking answer."""
        async with (
            mock_server(mock={"tokens_per_s": 50.0}) as (srv, client),
            client.chat.completions.with_streaming_response.create(
                model="m0",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=500,
                stream=True,
            ) as raw,
        ):
            lines = raw.iter_lines()
            async for line in lines:
                if '"content":"' in line and '"content":""' not in line:
                    break
            srv.deps.service.cancel(raw.headers["x-task-id"], reason=reason)
            rest = [line async for line in lines]
        assert any('"code":"pool_unavailable"' in line for line in rest), rest
        assert any(SERVER_STOPS[reason] in line for line in rest), rest


@pytest.mark.parametrize("kind", ["vllm", "openai", "tgi", "llamacpp"])
class TestFakeEngines:
    async def test_chat_reaches_the_engine(self, kind: str) -> None:
        """Chat-route engines get the messages, llama.cpp the templated prompt; the text, whole
        (async client) or streamed (sync client), is the engine's."""
        async with (
            start_fake(kind, **fake_options(kind)) as fake,
            running_server(config_of(engine_pool(kind, fake)), ENV) as srv,
            sdk(srv) as client,
        ):
            reply = await client.chat.completions.create(
                model=fake.model,
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=10,
                seed=5,
            )
            body = fake.requests[-1].body

            def streamed() -> str:
                with openai.OpenAI(base_url=srv.url + "/v1", api_key="unused") as sync:
                    chunks = sync.chat.completions.create(
                        model=fake.model,
                        messages=MESSAGES,  # type: ignore[arg-type]
                        max_tokens=10,
                        seed=5,
                        stream=True,
                    )
                    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

            streamed_text = await asyncio.to_thread(streamed)
        if kind == "llamacpp":
            prompt = chat_prompt(MESSAGES)
            assert prompt == body["prompt"]
        else:
            prompt = "\n".join(m["content"] for m in MESSAGES)
            assert MESSAGES == body["messages"]
        expected = "".join(generate(prompt, 5, 10).tokens)
        assert expected == reply.choices[0].message.content
        assert expected == streamed_text
        assert reply.usage is not None
        assert 10 == reply.usage.completion_tokens

    async def test_client_disconnect_stops_the_engine(self, kind: str) -> None:
        """Closing a stream mid-way cancels the task and the fake engine sees its request close."""
        async with (
            start_fake(kind, behaviour=Behaviour(tokens_per_s=50), **fake_options(kind)) as fake,
            running_server(config_of(engine_pool(kind, fake)), ENV) as srv,
            sdk(srv) as client,
        ):
            stream = await client.chat.completions.create(
                model=fake.model,
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=500,
                stream=True,
            )
            seen = 0
            async for chunk in stream:
                seen += bool(chunk.choices and chunk.choices[0].delta.content)
                if seen >= 2:
                    break
            await stream.close()
            await wait_until(lambda: fake.requests[-1].done.is_set(), "engine request end")
            record = fake.requests[-1]
        assert (True, False) == (record.closed_early, record.completed)


async def test_llamacpp_gets_the_gguf_chat_template() -> None:
    """A chat for llama.cpp is rendered with the template the engine reports in /props."""
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    async with (
        start_fake("llamacpp", chat_template=template) as fake,
        running_server(config_of(engine_pool("llamacpp", fake)), ENV) as srv,
        sdk(srv) as client,
    ):
        await wait_until(lambda: srv.deps.host.pool_capabilities("llamacpp-pool"), "probe")
        await client.chat.completions.create(
            model=fake.model,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=3,
        )
        prompt = fake.requests[-1].body["prompt"]
    assert "<system>Be brief.<user>Name a river.<assistant>" == prompt


async def test_tgi_chat_with_top_k_keeps_the_native_route() -> None:
    """TGI's chat route takes no top_k: such a chat goes to /generate_stream, templated here."""
    async with (
        start_fake("tgi") as fake,
        running_server(config_of(engine_pool("tgi", fake)), ENV) as srv,
        sdk(srv) as client,
    ):
        await client.chat.completions.create(
            model=fake.model,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=3,
            extra_body={"top_k": 5},
        )
        record = fake.requests[-1]
    assert "/generate_stream" == record.path
    assert chat_prompt(MESSAGES) == record.body["inputs"]
    assert 5 == record.body["parameters"]["top_k"]


@pytest.mark.parametrize("name", ["repetition_penalty", "repeat_penalty"])
async def test_a_repetition_penalty_extra_reaches_the_engine(name: str) -> None:
    """The repetition penalty clients pass with extra_body, under vLLM's name or llama.cpp's,
    reaches the engine as its own field, as top_k does."""
    async with engine_stack("vllm") as (fake, srv), sdk(srv) as client:
        await client.chat.completions.create(
            model=fake.model,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=3,
            extra_body={name: 1.2},
        )
        body = fake.requests[-1].body
    assert 1.2 == body["repetition_penalty"]


class TestBadInput:
    BAD: list[tuple[dict[str, Any], str | None]] = [
        ({"model": "m0", "messages": MESSAGES, "n": 3}, "n"),
        ({"model": "m0", "messages": MESSAGES, "n": True}, "n"),
        (
            {"model": "m0", "messages": MESSAGES, "repetition_penalty": 1.1, "repeat_penalty": 1.3},
            "repeat_penalty",
        ),
        ({"model": "m0", "messages": MESSAGES, "repeat_penalty": 0}, "repeat_penalty"),
        ({"model": "m0", "messages": MESSAGES, "presence_penalty": False}, "presence_penalty"),
        ({"model": "m0", "messages": []}, "messages"),
        ({"model": "m0", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"model": "m0", "messages": "hello"}, "messages"),
        ({"model": "m0", "messages": MESSAGES, "logprobs": True}, "logprobs"),
        ({"model": "m0", "messages": MESSAGES, "audio": {"voice": "alloy"}}, "audio"),
        ({"model": "m0", "messages": MESSAGES, "mirostat": 2}, "mirostat"),
        ({"model": "m0", "messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "m0", "messages": [{"role": "user", "content": "x" * 1_100_000}]}, None),
        ({"model": "m0", "messages": MESSAGES, "stream_options": {"include_usage": True}}, None),
        ({"model": "m0", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        (
            {
                "model": "m0",
                "messages": MESSAGES,
                "stream": True,
                "stream_options": {"include_usage": "yes"},
            },
            "stream_options.include_usage",
        ),
    ]

    @pytest.mark.parametrize(("body", "param"), BAD)
    async def test_refused_in_openai_shape(self, body: dict[str, Any], param: str | None) -> None:
        """Each bad request is an OpenAI-shaped 400 naming the field; the server keeps serving."""
        async with mock_server() as (srv, client):
            response = await srv.client.post("/v1/chat/completions", json=body)
            after = await client.chat.completions.create(
                model="m0",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=2,
            )
        assert 400 == response.status_code
        error = response.json()["error"]
        assert {"message", "type", "param", "code"} == set(error)
        assert "invalid_request_error" == error["type"]
        if param is not None:
            assert param == error["param"]
        # The message speaks JSON, the client's language: null and false, not None and False.
        assert not {"None", "False", "True"} & set(re.findall(r"\w+", error["message"]))
        assert after.choices[0].message.content

    async def test_malformed_json_and_unknown_model(self) -> None:
        """Malformed JSON is a 400 and an unknown model a 404, both in OpenAI's shape."""
        async with mock_server() as (srv, client):
            malformed = await srv.client.post(
                "/v1/completions",
                content=b'{"model": "m0", "prompt": ',
                headers={"Content-Type": "application/json"},
            )
            with pytest.raises(openai.NotFoundError):
                await client.completions.create(model="nope", prompt="hi")
            with pytest.raises(openai.BadRequestError) as wrong_type:
                await client.completions.create(model="m0", prompt="hi", max_tokens="8")  # type: ignore[arg-type]
        assert 400 == malformed.status_code
        assert "invalid_request_error" == malformed.json()["error"]["type"]
        assert "max_tokens" == wrong_type.value.param


async def test_sdk_sees_plain_httpx_compatible_stream() -> None:
    """A raw streamed chat ends with data: [DONE] after the finish chunk."""
    async with mock_server() as (srv, _client):
        body = {"model": "m0", "messages": MESSAGES, "max_tokens": 3, "stream": True}
        async with srv.client.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = [line async for line in response.aiter_lines() if line]
    assert isinstance(response, httpx.Response)
    assert "data: [DONE]" == lines[-1]
    assert response.headers["content-type"].startswith("text/event-stream")
