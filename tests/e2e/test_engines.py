"""Each engine kind end to end: a real server in front of a running fake engine, over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llama_orch.testing.fake_engines import Behaviour, FakeEngine, generate, start_fake
from tests.support.server import RunningServer, config_of, running_server, task_body

KINDS = ["llamacpp", "vllm", "tgi", "triton", "openai"]
UPSTREAM_KEY = "sk-upstream-e2e-0123456789abcdef"
ENV = {"UPSTREAM_KEY": UPSTREAM_KEY}


def engine_pool(kind: str, fake: FakeEngine, **overrides: Any) -> dict[str, Any]:
    """A pool of ``kind`` with provisioning.mode external, pointed at the running fake."""
    pool: dict[str, Any] = {
        "id": f"{kind}-pool",
        "engine": kind,
        "model": fake.model,
        "ctx": 4096,
        "devices": [0],
        "slots": 2,
        "endpoint": fake.url,
        "provisioning": {"mode": "external"},
        "backoff": {"initial_ms": 1, "max_ms": 10},
        "http": {"probe_timeout_ms": 1000},
    }
    if kind == "openai":
        pool["api_key_env"] = "UPSTREAM_KEY"
    pool.update(overrides)
    return pool


def fake_options(kind: str) -> dict[str, Any]:
    return {"api_key": UPSTREAM_KEY} if kind == "openai" else {}


@contextlib.asynccontextmanager
async def engine_stack(
    kind: str, behaviour: Behaviour | None = None, **pool: Any
) -> AsyncIterator[tuple[FakeEngine, RunningServer]]:
    async with start_fake(kind, behaviour=behaviour, **fake_options(kind)) as fake:
        config = config_of(engine_pool(kind, fake, **pool))
        async with running_server(config, ENV) as srv:
            yield fake, srv


def expected_text(kind: str, prompt: str, seed: int, max_tokens: int) -> str:
    """What the fake streams: TGI without sampling fields decodes greedily (seed unused)."""
    greedy = 0.0 if kind == "tgi" else None
    return "".join(generate(prompt, seed, max_tokens, temperature=greedy).tokens)


async def wait_until(predicate: Any, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("kind", KINDS)
class TestEngineEndToEnd:
    async def test_task_streams_through(self, kind: str) -> None:
        """A task on an external pool streams the engine's tokens in order, then ends."""
        async with engine_stack(kind) as (fake, srv):
            body = task_body(model=fake.model, engine=kind, max_tokens=12, prompt="héllo wörld")
            assert 202 == (await srv.submit(body)).status_code
            frames = await srv.stream(body["task_id"])
        kinds = [event for event, _ in frames]
        assert ("started", "end") == (kinds[0], kinds[-1])
        tokens = [data for event, data in frames if event == "token"]
        assert list(range(len(tokens))) == [t["i"] for t in tokens]
        assert expected_text(kind, "héllo wörld", 7, 12) == "".join(t["t"] for t in tokens)
        assert len(tokens) == frames[-1][1]["tokens_out"]

    async def test_cancel_closes_the_upstream_request(self, kind: str) -> None:
        """Canceling a running task closes its upstream request, and the fake sees it close."""
        async with engine_stack(kind, Behaviour(tokens_per_s=50)) as (fake, srv):
            body = task_body(model=fake.model, engine=kind, max_tokens=500)
            await srv.submit(body)
            await wait_until(lambda: fake.requests and fake.requests[-1].tokens_sent > 0, "tokens")
            response = await srv.client.post(f"/v1/tasks/{body['task_id']}/cancel")
            record = fake.requests[-1]
            # The fake's 500 tokens take 10 s: closed early, not completed, proves the cancel
            # reached it; the bound only limits how long a failure takes on a loaded machine.
            await asyncio.wait_for(record.done.wait(), 30)
            frames = await srv.stream(body["task_id"])
        assert 204 == response.status_code
        assert (True, False) == (record.closed_early, record.completed)
        assert ("end", True) == (frames[-1][0], frames[-1][1].get("canceled"))

    async def test_engine_error_becomes_an_sse_error_frame(self, kind: str) -> None:
        """An engine failing mid-stream ends the client's stream with one typed error frame."""
        async with engine_stack(kind, Behaviour(close_after=2)) as (fake, srv):
            body = task_body(model=fake.model, engine=kind, max_tokens=20)
            await srv.submit(body)
            frames = await srv.stream(body["task_id"])
        assert "error" == frames[-1][0]
        assert ("WORKER_RESET", kind) == (frames[-1][1]["code"], frames[-1][1]["engine"])
        assert 2 == sum(1 for event, _ in frames if event == "token")


SSE_FAULTS = [
    ({"error_after": 1}, "INTERNAL"),
    ({"malformed_after": 1}, "INTERNAL"),
    ({"stall_after": 1}, "DECODE_TIMEOUT"),
    ({"hang_before_first_token": True}, "DECODE_TIMEOUT"),
    ({"fail_status": 503}, "POOL_UNAVAILABLE"),
    ({"fail_status": 400}, "INVALID_PARAMS"),
]


class TestFaultsReachTheClient:
    @pytest.mark.parametrize(
        ("fault", "code"), SSE_FAULTS, ids=[next(iter(f)) + f"-{c}" for f, c in SSE_FAULTS]
    )
    async def test_fault_is_one_terminal_error_frame(
        self, fault: dict[str, Any], code: str
    ) -> None:
        """An engine fault ends the client's stream with exactly one error frame of its code."""
        http = {"probe_timeout_ms": 1000, "read_timeout_ms": 200}
        async with engine_stack("llamacpp", Behaviour(**fault), http=http) as (fake, srv):
            body = task_body(model=fake.model, engine="llamacpp", max_tokens=10)
            await srv.submit(body)
            frames = await srv.stream(body["task_id"])
        kinds = [event for event, _ in frames]
        assert ("error", 1) == (kinds[-1], kinds.count("error") + kinds.count("end"))
        assert (code, "llamacpp") == (frames[-1][1]["code"], frames[-1][1]["engine"])


class TestExternalReadiness:
    async def test_replica_turns_ready_only_when_the_engine_answers(self) -> None:
        """A refused connection keeps the pool Unready; once the engine listens it turns Ready."""
        async with (
            start_fake("vllm", listening=False) as fake,
            running_server(config_of(engine_pool("vllm", fake)), ENV) as srv,
        ):
            pool = srv.deps.pools.pools["vllm-pool"]
            refused = await srv.submit(task_body(model=fake.model, engine="vllm"))
            await fake.set_listening(True)
            await wait_until(lambda: pool.ready, "the pool to turn Ready")
            accepted = await srv.submit(task_body(model=fake.model, engine="vllm"))
        assert (503, "POOL_UNREADY") == (refused.status_code, refused.json()["code"])
        assert 202 == accepted.status_code

    async def test_loading_llamacpp_is_unready_then_ready(self) -> None:
        """llama.cpp's 503 "Loading model" keeps the replica Unready until it answers 200."""
        async with (
            start_fake("llamacpp", behaviour=Behaviour(loading=True)) as fake,
            running_server(config_of(engine_pool("llamacpp", fake))) as srv,
        ):
            pool = srv.deps.pools.pools["llamacpp-pool"]
            loading_error = pool.last_error
            fake.behaviour.loading = False
            await wait_until(lambda: pool.ready, "the pool to turn Ready")
        assert loading_error is not None and "Loading model" in loading_error

    async def test_failing_engine_turns_unready(self) -> None:
        """A Ready replica whose engine stops answering turns Unready on the next probes."""
        async with (
            start_fake("tgi") as fake,
            running_server(config_of(engine_pool("tgi", fake))) as srv,
        ):
            pool = srv.deps.pools.pools["tgi-pool"]
            was_ready = pool.ready
            fake.behaviour.health_status = 503
            await wait_until(lambda: not pool.ready, "the pool to turn Unready")
        assert was_ready

    async def test_capabilities_report_the_engine_version(self) -> None:
        """/v1/capabilities shows the version the engine itself reported."""
        async with engine_stack("tgi") as (_fake, srv):
            caps = (await srv.client.get("/v1/capabilities")).json()
        pool = next(p for p in caps["pools"] if p["pool_id"] == "tgi-pool")
        assert "3.3.6+simulated" == pool["engine_version"]

    async def test_a_huge_engine_version_is_cut(self) -> None:
        """A vLLM reporting a 100 kB version had all of it in capabilities and in every
        scrape (a label value); it is cut to 64 printable characters where it is read."""
        huge = "0.9.1+" + "x" * 100_000
        async with engine_stack("vllm", Behaviour(version=huge)) as (_fake, srv):
            caps = (await srv.client.get("/v1/capabilities")).json()
            scrape = (await srv.client.get("/metrics")).text
        pool = next(p for p in caps["pools"] if p["pool_id"] == "vllm-pool")
        assert "0.9.1+" + "x" * 57 + "…" == pool["engine_version"]
        assert f'engine_version="{pool["engine_version"]}"' in scrape
        assert "x" * 64 not in scrape

    async def test_openai_gpu_backing_is_labelled_a_claim(self) -> None:
        """An openai pool's GPUs are the operator's claim, and capabilities say so."""
        async with engine_stack("openai") as (_fake, srv):
            caps = (await srv.client.get("/v1/capabilities")).json()
        engine = next(e for e in caps["engines"] if e["engine"] == "openai")
        assert "operator-claimed" == engine["features"]["gpu_backing"]

    async def test_props_failure_keeps_the_replica_unready(self) -> None:
        """An engine whose health answers but whose props fail is not Ready."""
        async with start_fake("vllm") as fake:
            # An engine build without the models listing: /v1/models answers 404.
            fake.app.router.routes = [r for r in fake.app.router.routes if r.path != "/v1/models"]
            async with running_server(config_of(engine_pool("vllm", fake)), ENV) as srv:
                pool = srv.deps.pools.pools["vllm-pool"]
                ready, error = pool.ready, pool.last_error
        assert (False, True) == (ready, "HTTP 404" in (error or ""))


#: Objects of one request or run: none of them may be left in a reference cycle, which only
#: the garbage collector frees (late, and with a pause that grows with the heap).
_PER_REQUEST = {"SseResponse", "Emitter", "_Reply", "H1Response", "_Watchdog", "StreamView"}
_PER_REQUEST_CODE = {"Runner.run", "Emitter.chunks", "_Reply.chunks", "SseResponse.__call__"}


def _cyclic_garbage() -> set[str]:
    """Names of this process's per-request objects that only the garbage collector can free."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        names = {type(o).__qualname__ for o in gc.garbage}
        names |= {getattr(o, "__qualname__", "") for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return names & (_PER_REQUEST | _PER_REQUEST_CODE)


def _runs_and_requests_ended() -> bool:
    """No task runner (``task-<id>``) and no HTTP request cycle is still running."""
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        if task.get_name().startswith("task-") or getattr(coro, "__qualname__", "").endswith(
            "run_asgi"
        ):
            return False
    return True


class TestNoReferenceCycles:
    async def test_finished_streams_are_freed_without_the_garbage_collector(self) -> None:
        """Streams through the task API and the OpenAI front door, read to their end, leave
        nothing of their request in a reference cycle."""
        async with engine_stack("openai", slots=4) as (fake, srv):
            body = task_body(model=fake.model, engine="openai", max_tokens=6)
            assert 202 == (await srv.submit(body)).status_code
            await srv.stream(body["task_id"])  # warms connections and first-call caches
            gc.collect()
            gc.disable()
            try:
                for _ in range(3):
                    body = task_body(model=fake.model, engine="openai", max_tokens=6)
                    assert 202 == (await srv.submit(body)).status_code
                    assert "end" == (await srv.stream(body["task_id"]))[-1][0]
                    chat = {
                        "model": fake.model,
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 6,
                        "stream": True,
                    }
                    async with srv.client.stream("POST", "/v1/chat/completions", json=chat) as r:
                        assert b"[DONE]" in b"".join([chunk async for chunk in r.aiter_bytes()])
                await wait_until(
                    lambda: srv.deps.pools.get_active_leases("openai-pool") == 0, "leases"
                )
                # Until their last steps ran, runs and responses are alive, not garbage.
                await wait_until(_runs_and_requests_ended, "the runs' and requests' ends")
                assert set() == _cyclic_garbage()
            finally:
                gc.enable()
