"""narrate(): the one call for key events, and the coverage count the test run reports."""

from __future__ import annotations

import httpx

from llama_orch.adapters.host import AdapterHost, RetryPolicy
from llama_orch.observability.narration import TAXONOMY, narrate
from tests.support.narration import NarrationCoverage, NarrationLog
from tests.unit.adapters.engine_support import adapter_for


class TestNarrate:
    def test_fields_and_level(self, narration: NarrationLog) -> None:
        """actor, action, target and human are always set; None fields are dropped."""
        narrate(
            "pool-manager",
            "readiness",
            "p0",
            "Replica p0/r0 turns ready.",
            pool_id="p0",
            replica_id=None,
            level="warning",
        )
        event = narration.one("readiness")
        assert {
            "actor": "pool-manager",
            "action": "readiness",
            "target": "p0",
            "human": "Replica p0/r0 turns ready.",
            "pool_id": "p0",
            "log_level": "warning",
            "event": "readiness",
        } == event

    def test_taxonomy_names_the_spec_fields(self) -> None:
        """The taxonomy holds the ORCH-3304 and ORCH-3027 field names."""
        spec = {
            "actor",
            "action",
            "target",
            "human",
            "req_id",
            "job_id",
            "task_id",
            "session_id",
            "worker_id",
            "pool_id",
            "replica_id",
            "correlation_id",
            "error_kind",
            "retry_after_ms",
            "backoff_ms",
            "duration_ms",
            "engine",
            "engine_version",
            "queue_position",
            "predicted_start_ms",
            "tokens_in",
            "tokens_out",
            "decode_time_ms",
            "identity",
        }
        assert spec == TAXONOMY


class TestCoverage:
    def test_counts_key_events_only(self) -> None:
        """Info-or-louder events and actor events count; debug chatter does not."""
        coverage = NarrationCoverage()
        coverage.observe_all(
            [
                {"actor": "a", "action": "x", "human": "Does x.", "log_level": "info"},
                {"actor": "a", "action": "y", "log_level": "info"},
                {"event": "plain", "log_level": "warning"},
                {"event": "detail", "log_level": "debug"},
            ]
        )
        assert (3, 1, {"a/y": 1, "?/plain": 1}) == (
            coverage.key_events,
            coverage.narrated,
            dict(coverage.missing),
        )
        assert coverage.summary().startswith("narration coverage: 33.3% of 3 key events")


class TestRetryNarration:
    async def test_each_retry_is_narrated(self, narration: NarrationLog) -> None:
        """An adapter-host retry of an idempotent call is a key event with its backoff."""

        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused")

        host = AdapterHost()
        adapter = adapter_for("vllm", "http://engine", "m", transport=httpx.MockTransport(refuse))
        host.bind("p", "r0", adapter, retry=RetryPolicy(attempts=3, initial_s=0.001, max_s=0.002))
        await host.health("p", "r0")
        retries = narration.events("retry", actor="adapter-host")
        assert ([1, 2], {"vllm"}) == (
            [e["attempt"] for e in retries],
            {e["engine"] for e in retries},
        )
        assert all(e["human"].startswith("Retries a vllm call") for e in retries)
