"""The adapter host: retry caps on probes, no retry of generation, circuit breaker, cache."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from llama_orch.adapters.host import AdapterHost, BreakerPolicy, RetryPolicy
from llama_orch.adapters.mock import MockEngine
from llama_orch.adapters.openai import MAX_STOP
from llama_orch.config import MockEngineConfig
from llama_orch.contracts.engine import WorkerHealth
from llama_orch.errors import WorkerInternal, WorkerInvalidParams, WorkerReset, WorkerUnavailable
from llama_orch.observability.metrics import Metrics
from tests.support.narration import NarrationLog
from tests.unit.adapters.engine_support import adapter_for, fake_and_adapter, request

FAST_RETRY = RetryPolicy(attempts=3, initial_s=0.001, max_s=0.002)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingTransport(httpx.AsyncBaseTransport):
    """Answers every request with ``respond`` and counts requests per path."""

    def __init__(self, respond: httpx.Response | Exception) -> None:
        self.respond = respond
        self.calls: dict[str, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls[request.url.path] = self.calls.get(request.url.path, 0) + 1
        if isinstance(self.respond, Exception):
            raise self.respond
        return self.respond


class BrokenStream(httpx.AsyncByteStream):
    """Two llama.cpp token frames, then the connection breaks."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'data: {"content":"a","stop":false}\n\ndata: {"content":"b","stop":false}\n\n'
        raise httpx.ReadError("connection reset by peer")


def failing_mock() -> MockEngine:
    config = MockEngineConfig(ttft_ms=0, tokens_per_s=10_000, fail_at_token=0)
    return MockEngine(config, slots=1, model="m")


class TestRetries:
    async def test_health_retries_are_capped_and_counted(self) -> None:
        """An unreachable engine is probed exactly retries+1 times, then reads as not live."""
        transport = CountingTransport(httpx.ConnectError("refused"))
        host = AdapterHost()
        host.bind(
            "p",
            "r0",
            adapter_for("vllm", "http://engine", "m", transport=transport),
            retry=FAST_RETRY,
        )
        health = await host.health("p", "r0")
        assert ({"/health": 3}, 2) == (transport.calls, host.retries_spent("p", "r0"))
        assert (False, False, "closed") == (health.live, health.ready, health.breaker)
        assert "cannot connect" in (health.detail or "")

    async def test_submit_is_never_retried(self) -> None:
        """A failed generation request is sent once, whatever the retry policy says."""
        transport = CountingTransport(httpx.Response(503, json={"error": {"code": 503}}))
        host = AdapterHost()
        host.bind(
            "p",
            "r0",
            adapter_for("llamacpp", "http://e", "m", transport=transport),
            retry=FAST_RETRY,
        )
        with pytest.raises(WorkerUnavailable):
            [e async for e in host.submit("p", "r0", request())]
        assert {"/completion": 1} == transport.calls

    async def test_nothing_is_retried_after_the_first_token(self) -> None:
        """A stream that breaks after tokens is a reset, and the request is not sent again."""
        response = httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=BrokenStream()
        )
        transport = CountingTransport(response)
        host = AdapterHost()
        host.bind(
            "p",
            "r0",
            adapter_for("llamacpp", "http://e", "m", transport=transport),
            retry=FAST_RETRY,
        )
        texts: list[str] = []
        with pytest.raises(WorkerReset):
            async for event in host.submit("p", "r0", request()):
                # The host relays the batched stream: one ``tokens`` event per read.
                texts += event.texts
        assert (["a", "b"], {"/completion": 1}) == (texts, transport.calls)


class TestCircuitBreaker:
    async def test_repeated_failures_open_the_breaker(
        self, captured_logs: list[dict[str, object]]
    ) -> None:
        """After the configured failures, submissions fail fast and health says open."""
        clock = Clock()
        host = AdapterHost(clock=clock)
        host.bind("p", "r0", failing_mock(), breaker=BreakerPolicy(failures=2, cooldown_s=30))
        for _ in range(2):
            with pytest.raises(WorkerInternal):
                [e async for e in host.submit("p", "r0", request())]
        with pytest.raises(WorkerUnavailable) as info:
            [e async for e in host.submit("p", "r0", request())]
        health = await host.health("p", "r0")
        assert ("open", False) == (health.breaker, health.ready)
        assert 30_000 == info.value.retry_after_ms
        opened = [log for log in captured_logs if log.get("action") == "breaker"]
        assert ["open"] == [log["breaker"] for log in opened]

    async def test_cooldown_then_healthy_probe_closes(self) -> None:
        """After the cool-down the next probe is the trial; a healthy answer closes the breaker."""
        clock = Clock()
        host = AdapterHost(clock=clock)
        host.bind("p", "r0", failing_mock(), breaker=BreakerPolicy(failures=1, cooldown_s=10))
        with pytest.raises(WorkerInternal):
            [e async for e in host.submit("p", "r0", request())]
        assert "open" == host.breaker_state("p", "r0")
        clock.now += 10
        health = await host.health("p", "r0")
        assert (True, "closed") == (health.ready, health.breaker)

    async def test_client_mistakes_do_not_trip(self) -> None:
        """Requests the engine rejects as invalid say nothing about its health."""
        transport = CountingTransport(httpx.Response(400, json={"error": {"code": 400}}))
        host = AdapterHost()
        host.bind(
            "p",
            "r0",
            adapter_for("llamacpp", "http://e", "m", transport=transport),
            breaker=BreakerPolicy(failures=1),
        )
        for _ in range(3):
            with pytest.raises(WorkerInvalidParams):
                [e async for e in host.submit("p", "r0", request())]
        assert "closed" == host.breaker_state("p", "r0")


class TestCapabilityCache:
    async def test_refresh_fills_and_rebind_clears(self) -> None:
        """A refresh caches the snapshot; rebinding the replica forgets it."""
        host = AdapterHost()
        mock = MockEngine(MockEngineConfig(engine_version="mock-9"), slots=2, model="m")
        host.bind("p", "r0", mock)
        snapshot = await host.refresh_capabilities("p", "r0")
        assert ("mock-9", snapshot) == (snapshot.engine_version, host.capabilities("p", "r0"))
        host.bind("p", "r0", mock)
        assert host.capabilities("p", "r0") is None

    async def test_pool_capabilities_lists_cached_replicas_only(self) -> None:
        """A pool's snapshots are keyed by replica and hold only probed replicas."""
        host = AdapterHost()
        for replica in ("r0", "r1"):
            host.bind("p", replica, MockEngine(MockEngineConfig(), slots=1, model="m"))
        host.bind("q", "r0", MockEngine(MockEngineConfig(), slots=1, model="m"))
        await host.refresh_capabilities("p", "r1")
        await host.refresh_capabilities("q", "r0")
        assert ["r1"] == list(host.pool_capabilities("p"))


class TestHostMetrics:
    async def test_retries_reach_the_pool_counter(self) -> None:
        """Each retry of an idempotent probe counts in adapter_retries_total (D-HOST-01)."""
        metrics = Metrics()
        host = AdapterHost(metrics=metrics)
        transport = CountingTransport(httpx.ConnectError("refused"))
        adapter = adapter_for("vllm", "http://engine", "m", transport=transport)
        host.bind("p", "r0", adapter, retry=FAST_RETRY)
        await host.health("p", "r0")
        labels = {"engine": "vllm", "pool_id": "p"}
        assert 2.0 == metrics.registry.get_sample_value("adapter_retries_total", labels)

    async def test_breaker_trips_reach_the_pool_counter(self) -> None:
        """Each opening of a replica's breaker counts in adapter_breaker_trips_total."""
        metrics = Metrics()
        clock = Clock()
        host = AdapterHost(clock=clock, metrics=metrics)
        host.bind("p", "r0", failing_mock(), breaker=BreakerPolicy(failures=1, cooldown_s=10))
        host.bind("p", "r1", failing_mock(), breaker=BreakerPolicy(failures=1, cooldown_s=10))
        for replica in ("r0", "r1"):
            with pytest.raises(WorkerInternal):
                [e async for e in host.submit("p", replica, request())]
        labels = {"engine": "mock", "pool_id": "p"}
        trips = metrics.registry.get_sample_value("adapter_breaker_trips_total", labels)
        assert (2.0, 1) == (trips, host.breaker_trips("p", "r0"))

    async def test_a_host_without_metrics_still_counts_per_replica(self) -> None:
        """Without a Metrics object the per-replica counts still work."""
        host = AdapterHost()
        transport = CountingTransport(httpx.ConnectError("refused"))
        host.bind(
            "p", "r0", adapter_for("vllm", "http://e", "m", transport=transport), retry=FAST_RETRY
        )
        await host.health("p", "r0")
        assert 2 == host.retries_spent("p", "r0")


class BrokenHealth(MockEngine):
    """A mock whose health probe has a bug."""

    async def health(self) -> WorkerHealth:
        raise RuntimeError("bug")


class TestAdapterBugs:
    async def test_a_crashing_probe_reads_as_not_live(self) -> None:
        """An adapter bug in a probe becomes a failed probe, not a crashed probe loop."""
        host = AdapterHost()
        host.bind("p", "r0", BrokenHealth(MockEngineConfig(), slots=1, model="m"))
        health = await host.health("p", "r0")
        assert (False, "mock adapter failed: RuntimeError") == (health.live, health.detail)


class TestPrestart:
    async def test_a_refused_request_is_not_sent_early_and_submit_reports_it(
        self, narration: NarrationLog
    ) -> None:
        """More stop sequences than OpenAI takes: prestart sends nothing and says nothing; the
        refusal comes from submit, as for any task, and nothing reached the engine."""
        async with fake_and_adapter("openai") as (fake, adapter):
            host = AdapterHost()
            host.bind("p", "r0", adapter)
            # A first stream leaves a kept-alive connection the next request could go out on.
            [e async for e in host.submit("p", "r0", request())]
            sent = len(fake.requests)
            refused = request(stop=[f"s{i}" for i in range(MAX_STOP + 1)])
            assert host.prestart("p", "r0", refused) is None
            with pytest.raises(WorkerInvalidParams):
                [e async for e in host.submit("p", "r0", refused)]
            assert sent == len(fake.requests)
            assert 2 == len(narration.events("submit"))  # one per submit, none for prestart

    async def test_a_prestarted_request_streams_through_submit_and_is_narrated_once(
        self, narration: NarrationLog
    ) -> None:
        async with fake_and_adapter("openai") as (fake, adapter):
            host = AdapterHost()
            host.bind("p", "r0", adapter)
            [e async for e in host.submit("p", "r0", request())]
            prestarted = host.prestart("p", "r0", request())
            assert prestarted is not None
            kinds = [e.kind async for e in host.submit("p", "r0", request(), prestarted)]
            assert ("started", "end", True) == (kinds[0], kinds[-1], "tokens" in kinds)
            assert (2, 2) == (len(fake.requests), len(narration.events("submit")))
