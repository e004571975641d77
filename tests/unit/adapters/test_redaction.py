"""Upstream secrets never reach a log line or an error message (ORCH-3613, OAI-6020)."""

from __future__ import annotations

import pytest

from llama_orch.adapters.host import AdapterHost, RetryPolicy
from llama_orch.errors import WorkerError
from llama_orch.testing.fake_engines import Behaviour, start_fake
from tests.unit.adapters.engine_support import adapter_for, request

SECRET = "sk-wrong-but-secret-7f3a9c2e5b"


def flatten(logs: list[dict[str, object]]) -> str:
    return "\n".join(repr(entry) for entry in logs)


class TestRedaction:
    async def test_upstream_echo_of_the_key_is_redacted(
        self, captured_logs: list[dict[str, object]]
    ) -> None:
        """An upstream that echoes the presented key cannot leak it into messages or logs."""
        messages: list[str] = []
        async with start_fake("openai", api_key="sk-the-accepted-key-000") as fake:
            host = AdapterHost()
            host.bind(
                "p",
                "r0",
                adapter_for("openai", fake.url, fake.model, key=SECRET),
                retry=RetryPolicy(attempts=2, initial_s=0.001),
            )
            health = await host.health("p", "r0")
            messages.append(health.detail or "")
            with pytest.raises(WorkerError) as info:
                [e async for e in host.submit("p", "r0", request())]
            messages.append(info.value.message)
            messages.append(repr(info.value.envelope()))
            await host.aclose()
        assert f"Bearer {SECRET}" == fake.requests[-1].headers["authorization"]
        assert "Incorrect API key" in info.value.message  # the upstream's words survive
        assert 0 == sum(text.count(SECRET) for text in messages)
        assert 0 == flatten(captured_logs).count(SECRET)

    async def test_credentials_in_the_endpoint_are_redacted(
        self, captured_logs: list[dict[str, object]]
    ) -> None:
        """user:password in an endpoint URL and a token in its query stay out of messages."""
        async with start_fake("tgi", behaviour=Behaviour(fail_status=500)) as fake:
            url = fake.url.replace("http://", "http://admin:hunter2secret@") + "/?token=tok99secret"
            adapter = adapter_for("tgi", url, fake.model)
            try:
                with pytest.raises(WorkerError) as info:
                    [e async for e in adapter.submit(request())]
            finally:
                await adapter.aclose()
        text = info.value.message + flatten(captured_logs)
        assert (0, 0) == (text.count("hunter2secret"), text.count("tok99secret"))

    async def test_error_logs_carry_no_headers(
        self, captured_logs: list[dict[str, object]]
    ) -> None:
        """Warnings about failed submissions name the task and error kind, never headers."""
        async with start_fake("openai", api_key="sk-the-accepted-key-000") as fake:
            host = AdapterHost()
            host.bind("p", "r0", adapter_for("openai", fake.url, fake.model, key=SECRET))
            with pytest.raises(WorkerError):
                [e async for e in host.submit("p", "r0", request())]
            await host.aclose()
        warnings = [log for log in captured_logs if log.get("log_level") in ("warning", "error")]
        assert warnings
        assert all("authorization" not in flatten([w]).lower() for w in warnings)
