"""The Ollama-compatible front door, with plain HTTP (NDJSON) and the ``ollama`` Python client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import ollama
import orjson
import pytest

from llama_orch.contracts.engine import ChatMessage
from llama_orch.server.frontdoor._chat import render_chat
from llama_orch.testing.fake_engines import Behaviour, generate, start_fake
from tests.e2e.test_engines import ENV, engine_pool, fake_options, wait_until
from tests.support.frontdoor import MESSAGES, chat_prompt, mock_text
from tests.support.narration import NarrationLog
from tests.support.server import RunningServer, config_of, mock_pool, running_server


@contextlib.asynccontextmanager
async def ollama_stack(**pool: Any) -> AsyncIterator[tuple[RunningServer, ollama.AsyncClient]]:
    async with running_server(config_of(mock_pool(**pool))) as srv:
        client = ollama.AsyncClient(host=srv.url)
        try:
            yield srv, client
        finally:
            await client.close()


def user_prompt(prompt: str) -> str:
    """/api/generate applies the template to its prompt as one user turn, as Ollama does."""
    return render_chat([ChatMessage("user", prompt)])


class TestPlainHttp:
    async def test_generate_streams_ndjson(self) -> None:
        """Each line is one JSON object; the last one is done with counts and durations."""
        async with ollama_stack() as (srv, _):
            body = {"model": "m0", "prompt": "hi", "options": {"seed": 4, "num_predict": 9}}
            async with srv.client.stream("POST", "/api/generate", json=body) as response:
                raw = [line async for line in response.aiter_lines()]
        lines = [orjson.loads(line) for line in raw]
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert all(raw), "no blank lines"
        assert [False] * (len(lines) - 1) + [True] == [line["done"] for line in lines]
        assert mock_text(user_prompt("hi"), 9, seed=4) == "".join(x["response"] for x in lines)
        final = lines[-1]
        assert ("length", 9) == (final["done_reason"], final["eval_count"])
        assert final["total_duration"] > 0
        assert {"x-task-id", "x-queue-position", "x-predicted-start-ms"} <= set(response.headers)

    async def test_curl_style_body_without_json_type(self) -> None:
        """``curl -d`` posts form-encoded JSON, as Ollama's own examples do: served; the same
        body marked by a browser with an Origin is refused, so no page can post it."""
        body = orjson.dumps({"model": "m0", "prompt": "hi", "raw": True, "stream": False})
        form = {"content-type": "application/x-www-form-urlencoded"}
        async with ollama_stack() as (srv, _):
            served = await srv.client.post("/api/generate", content=body, headers=form)
            browser = await srv.client.post(
                "/api/generate",
                content=body,
                headers={**form, "origin": srv.url},
            )
        assert 200 == served.status_code
        assert served.json()["done"] is True
        assert 415 == browser.status_code

    async def test_raw_generate_without_stream(self) -> None:
        """raw sends the prompt as is; stream: false answers one object."""
        async with ollama_stack() as (srv, _):
            body = {"model": "m0", "prompt": "hi", "raw": True, "stream": False}
            body["options"] = {"seed": 4, "num_predict": 5, "temperature": 0.3}
            response = await srv.client.post("/api/generate", json=body)
        answer = response.json()
        assert mock_text("hi", 5, seed=4, temperature=0.3) == answer["response"]
        assert answer["done"] is True

    async def test_empty_prompt_loads(self) -> None:
        """An empty prompt is a load request; with keep_alive 0 it reports unload."""
        async with ollama_stack() as (srv, _):
            load = await srv.client.post("/api/generate", json={"model": "m0", "stream": False})
            unload = await srv.client.post(
                "/api/chat", json={"model": "m0", "messages": [], "keep_alive": 0}
            )
        assert "load" == load.json()["done_reason"]
        assert "unload" == orjson.loads(unload.content.splitlines()[0])["done_reason"]


class TestOllamaClient:
    async def test_chat_streamed_and_not(self) -> None:
        """The ollama client's chat, streamed and whole, returns the engine's text."""
        async with ollama_stack() as (_, client):
            options = {"seed": 7, "num_predict": 11}
            whole = await client.chat(model="m0", messages=MESSAGES, options=options)
            parts = [
                part
                async for part in await client.chat(
                    model="m0", messages=MESSAGES, options=options, stream=True
                )
            ]
        expected = mock_text(chat_prompt(MESSAGES), 11)
        assert expected == whole.message.content
        assert expected == "".join(p.message.content or "" for p in parts)
        assert parts[-1].done and not parts[0].done
        assert 11 == whole.eval_count

    async def test_generate_and_listings(self) -> None:
        """generate, list, ps, show and a model name with :latest all work."""
        async with ollama_stack() as (srv, client):
            reply = await client.generate(model="m0:latest", prompt="hi", options={"seed": 2})
            listed = await client.list()
            running = await client.ps()
            shown = await client.show("m0")
            version = (await srv.client.get("/api/version")).json()
        assert reply.response
        assert ["m0:latest"] == [m.model for m in listed.models]
        assert ["m0:latest"] == [m.model for m in running.models]
        assert shown.modelinfo is not None
        assert 4096 == shown.modelinfo["mock.context_length"]
        assert "version" in version

    @pytest.mark.parametrize(
        ("workloads", "capabilities"),
        [
            (["completion"], ["completion"]),
            (["embedding"], ["embedding"]),
            (["completion", "embedding"], ["completion", "embedding"]),
        ],
    )
    async def test_show_lists_what_the_model_serves(
        self, workloads: list[str], capabilities: list[str]
    ) -> None:
        """/api/show's capabilities follow the pool's workloads: an embedding model is not
        offered for generation."""
        async with ollama_stack(supported_workloads=workloads) as (_, client):
            shown = await client.show("m0")
        assert capabilities == shown.capabilities

    async def test_num_predict_past_the_context_is_cut_to_fit(self) -> None:
        """num_predict is a most, as Ollama reads it (it never refuses a large one): past what
        the model's context leaves, the answer stops there with done_reason "length"."""
        async with ollama_stack(ctx=256, mock={"tokens_per_s": 20_000.0}) as (_, client):
            reply = await client.generate(model="m0", prompt="hi", options={"num_predict": 100_000})
        assert "length" == reply.done_reason
        assert reply.eval_count is not None and 0 < reply.eval_count < 256

    async def test_num_predict_minus_two_fills_the_context(self) -> None:
        """num_predict -2 is Ollama's "until the context is full": past the 1024 tokens an
        answer gets by default, up to what the context leaves after the prompt."""
        async with ollama_stack(ctx=2048, mock={"tokens_per_s": 50_000.0}) as (_, client):
            filled = await client.generate(model="m0", prompt="hi", options={"num_predict": -2})
        assert "length" == filled.done_reason
        assert filled.eval_count is not None and 1024 < filled.eval_count < 2048

    async def test_options_at_their_off_value_are_accepted(self) -> None:
        """An option this server cannot honour is accepted at the value that switches it off,
        as the OpenAI door accepts presence_penalty 0; any other value is refused by name."""
        off = {
            "presence_penalty": 0,
            "frequency_penalty": 0.0,
            "mirostat": 0,
            "typical_p": 1.0,
            "tfs_z": 1,
            "penalize_newline": False,
        }
        async with ollama_stack() as (_, client):
            plain = await client.generate(model="m0", prompt="hi", options={"num_predict": 4})
            neutral = await client.generate(
                model="m0", prompt="hi", options={"num_predict": 4, **off}
            )
            with pytest.raises(ollama.ResponseError) as refused:
                await client.generate(model="m0", prompt="hi", options={"presence_penalty": 0.5})
        assert plain.response == neutral.response
        assert 400 == refused.value.status_code
        assert "options.presence_penalty" in refused.value.error

    async def test_an_unknown_option_is_ignored_with_a_warning(
        self, narration: NarrationLog
    ) -> None:
        """As Ollama does: an option it does not know (a typo, a newer option) is ignored and
        the server log says which; runner options are pool settings and ignored quietly."""
        async with ollama_stack() as (_, client):
            reply = await client.generate(
                model="m0",
                prompt="hi",
                options={"num_predict": 2, "temprature": 0.1, "num_ctx": 8192},
            )
        assert reply.done
        [warning] = narration.events("ignore-options")
        assert ["temprature"] == warning["options"]
        assert "temprature" in warning["human"]

    async def test_errors_in_ollama_shape(self) -> None:
        """Unknown model, bad options and bad JSON raise ResponseError with Ollama's shape."""
        async with ollama_stack() as (srv, client):
            with pytest.raises(ollama.ResponseError) as missing:
                await client.chat(model="nope", messages=MESSAGES)
            with pytest.raises(ollama.ResponseError) as refused:
                await client.generate(model="m0", prompt="hi", options={"mirostat": 2})
            with pytest.raises(ollama.ResponseError) as typed:
                await client.generate(model="m0", prompt="hi", options={"num_predict": "x"})
            listed = await srv.client.post(
                "/api/generate", json={"model": "m0", "prompt": "hi", "options": []}
            )
            with pytest.raises(ollama.ResponseError) as huge:
                await client.generate(model="m0", prompt="x" * 1_100_000)
            malformed = await srv.client.post(
                "/api/chat", content=b"{", headers={"Content-Type": "application/json"}
            )
            after = await client.generate(model="m0", prompt="hi", options={"num_predict": 2})
        assert (404, "model 'nope' not found") == (missing.value.status_code, missing.value.error)
        assert 400 == refused.value.status_code
        assert "options.mirostat" in refused.value.error
        assert typed.value.error.startswith("options.num_predict must be an integer")
        assert (400, {"error": "options must be an object"}) == (listed.status_code, listed.json())
        assert 400 == huge.value.status_code
        assert 400 == malformed.status_code
        assert {"error"} == set(malformed.json())
        assert after.done


async def test_a_full_queue_is_ollamas_server_busy() -> None:
    """Ollama answers a full queue with 503 "server busy" (429 is its rate limit): the door
    does the same, with the retry advice kept."""
    async with ollama_stack(mock={"tokens_per_s": 10.0}, queue={"capacity": 1}) as (srv, client):
        service = srv.deps.service
        body = {"model": "m0", "prompt": "hi", "stream": False, "options": {"num_predict": 8}}
        busy = []
        for running, queued in ((1, 0), (1, 1)):
            busy.append(asyncio.create_task(srv.client.post("/api/generate", json=body)))
            await wait_until(
                lambda r=running, q=queued: (
                    (service.pool_status("p0").running, service.pool_status("p0").queue_depth)
                    == (r, q)
                ),
                "a running task and a full queue",
            )
        refused = await srv.client.post("/api/generate", json=body)
        with pytest.raises(ollama.ResponseError) as raised:
            await client.generate(model="m0", prompt="hi", options={"num_predict": 8})
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
    assert 503 == refused.status_code, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert "queue is full" in refused.json()["error"]
    assert 503 == raised.value.status_code


class TestFakeEngine:
    async def test_disconnect_stops_the_engine(self) -> None:
        """Closing an NDJSON stream mid-way closes the fake engine's request."""
        kind = "vllm"
        async with (
            start_fake(kind, behaviour=Behaviour(tokens_per_s=50), **fake_options(kind)) as fake,
            running_server(config_of(engine_pool(kind, fake)), ENV) as srv,
        ):
            body = {"model": fake.model, "messages": MESSAGES, "options": {"num_predict": 500}}
            async with srv.client.stream("POST", "/api/chat", json=body) as response:
                async for line in response.aiter_lines():
                    if orjson.loads(line)["message"]["content"]:
                        break
            await wait_until(lambda: fake.requests[-1].done.is_set(), "engine request end")
            record = fake.requests[-1]
        assert (True, False) == (record.closed_early, record.completed)

    async def test_chat_text_equals_the_engine_output(self) -> None:
        """A chat through /api/chat gets the chat-route engine's exact output."""
        kind = "openai"
        async with (
            start_fake(kind, **fake_options(kind)) as fake,
            running_server(config_of(engine_pool(kind, fake)), ENV) as srv,
        ):
            client = ollama.AsyncClient(host=srv.url)
            try:
                reply = await client.chat(
                    model=fake.model, messages=MESSAGES, options={"seed": 5, "num_predict": 10}
                )
            finally:
                await client.close()
        prompt = "\n".join(m["content"] for m in MESSAGES)
        assert "".join(generate(prompt, 5, 10).tokens) == reply.message.content

    async def test_sampling_options_reach_the_engine(self) -> None:
        """Ollama's sampling options that the task API carries reach the engine in its own
        terms: repeat_penalty is llama.cpp's repeat_penalty, as temperature and top_k are."""
        kind = "llamacpp"
        async with (
            start_fake(kind, **fake_options(kind)) as fake,
            running_server(config_of(engine_pool(kind, fake)), ENV) as srv,
        ):
            client = ollama.AsyncClient(host=srv.url)
            try:
                await client.generate(
                    model=fake.model,
                    prompt="hi",
                    options={"num_predict": 3, "repeat_penalty": 1.3, "top_k": 7},
                )
            finally:
                await client.close()
            body = fake.requests[-1].body
        assert (1.3, 7, 3) == (body["repeat_penalty"], body["top_k"], body["n_predict"])
