"""The shared HTTP util: client settings, retry caps, and error translation."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import aiohttp
import httpx
import pytest

from llama_orch.adapters._base import HttpAdapter
from llama_orch.adapters._errors import (
    UpstreamBroken,
    UpstreamConnectTimeout,
    UpstreamSilent,
    UpstreamUnreachable,
)
from llama_orch.adapters._http import (
    KEEPALIVE_EXPIRY_S,
    RetryPolicy,
    build_client,
    build_upstream,
    error_for_status,
    map_transport_errors,
    redact_url,
    with_retries,
)
from llama_orch.config import BackoffConfig, HttpConfig
from llama_orch.errors import (
    DecodeTimeout,
    EngineUnreachable,
    WorkerError,
    WorkerInternal,
    WorkerInvalidParams,
    WorkerReset,
    WorkerUnavailable,
)
from llama_orch.observability.redaction import Redactor
from llama_orch.testing.fake_engines import Behaviour, FakeLlamaCpp
from tests.unit.adapters.engine_support import (
    Tok,
    adapter_for,
    collect,
    fake_and_adapter,
    request,
)


class Sleeps:
    """Records backoff delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class TestWithRetries:
    async def test_retries_are_capped(self) -> None:
        """A call that keeps failing is attempted exactly ``attempts`` times, then re-raised."""
        calls = 0

        async def failing() -> None:
            nonlocal calls
            calls += 1
            raise WorkerUnavailable("down")

        sleeps = Sleeps()
        with pytest.raises(WorkerUnavailable):
            await with_retries(failing, RetryPolicy(attempts=4, initial_s=0.1), sleep=sleeps)
        assert (4, 3) == (calls, len(sleeps.delays))

    async def test_backoff_is_jittered_and_capped(self) -> None:
        """Waits are random within the exponential envelope and never exceed the cap."""
        sleeps = Sleeps()

        async def failing() -> None:
            raise DecodeTimeout("slow")

        policy = RetryPolicy(attempts=8, initial_s=1.0, factor=2.0, max_s=3.0, jitter=True)
        with pytest.raises(DecodeTimeout):
            await with_retries(failing, policy, sleep=sleeps)
        assert 7 == len(sleeps.delays)
        assert all(0 <= d <= 3.0 for d in sleeps.delays)
        assert len(set(sleeps.delays)) > 1

    async def test_without_jitter_backoff_doubles(self) -> None:
        """With jitter off, the waits are initial * factor**n up to the cap."""
        sleeps = Sleeps()

        async def failing() -> None:
            raise WorkerReset("reset")

        policy = RetryPolicy(attempts=5, initial_s=0.5, factor=2.0, max_s=3.0, jitter=False)
        with pytest.raises(WorkerReset):
            await with_retries(failing, policy, sleep=sleeps)
        assert [0.5, 1.0, 2.0, 3.0] == sleeps.delays

    async def test_client_mistakes_are_not_retried(self) -> None:
        """An error that retrying cannot fix is raised after one attempt."""
        calls = 0

        async def refused() -> None:
            nonlocal calls
            calls += 1
            raise WorkerInvalidParams("bad")

        with pytest.raises(WorkerInvalidParams):
            await with_retries(refused, RetryPolicy(attempts=5), sleep=Sleeps())
        assert 1 == calls

    async def test_success_after_failures(self) -> None:
        """A transient failure followed by success returns the result and reports each retry."""
        outcomes = [WorkerUnavailable("a"), WorkerUnavailable("b"), "ok"]
        retried: list[int] = []

        async def flaky() -> str:
            outcome = outcomes.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        result = await with_retries(
            flaky,
            RetryPolicy(attempts=3),
            sleep=Sleeps(),
            on_retry=lambda n, _e, _d: retried.append(n),
        )
        assert ("ok", [1, 2]) == (result, retried)

    def test_policy_from_config(self) -> None:
        """retries: N means N+1 attempts; backoff settings carry over in seconds."""
        policy = RetryPolicy.from_config(
            HttpConfig(retries=3), BackoffConfig(initial_ms=250, factor=3.0, max_ms=4000)
        )
        assert RetryPolicy(4, 0.25, 3.0, 4.0, True) == policy


class TestBuildClient:
    async def test_client_settings(self) -> None:
        """Timeouts come from the pool; env proxies are ignored; redirects are not followed."""
        http = HttpConfig(connect_timeout_ms=1500, read_timeout_ms=7000)
        async with build_client(http, base_url="http://127.0.0.1:9") as client:
            timeout = client.timeout
            assert (1.5, 7.0) == (timeout.connect, timeout.read)
            assert (False, False) == (client.trust_env, client.follow_redirects)
            assert "http://127.0.0.1:9" == str(client.base_url)

    async def test_default_headers(self) -> None:
        """Headers given at build time go on every request (the bearer key, for instance)."""
        seen: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request.headers["authorization"])
            return httpx.Response(200)

        client = build_client(
            HttpConfig(),
            base_url="http://engine",
            headers={"authorization": "Bearer k"},
            transport=httpx.MockTransport(handler),
        )
        async with client:
            await client.get("/health")
        assert ["Bearer k"] == seen


def pool_limits(client: httpx.AsyncClient) -> tuple[int, int, float | None]:
    pool = client._transport._pool  # type: ignore[attr-defined]
    return pool._max_connections, pool._max_keepalive_connections, pool._keepalive_expiry


class TestUpstreamClients:
    async def test_https_upstreams_stream_through_one_httpx_pool(self) -> None:
        """Through httpx (an upstream that may negotiate HTTP/2), one pool of max_connections
        keep-alive connections, verifying TLS."""
        upstream = build_upstream(HttpConfig(), base_url="https://engine", max_connections=1108)
        assert "httpx" == upstream.streams_via
        streams = upstream._streams  # type: ignore[attr-defined]
        assert (1108, 1108) == pool_limits(streams)[:2]
        assert "https://engine" == str(streams.base_url)
        context = streams._transport._pool._ssl_context
        assert context.verify_mode == ssl.CERT_REQUIRED
        await upstream.aclose()

    async def test_plain_http_upstreams_stream_through_one_h1_pool(self) -> None:
        """An http:// engine streams over HTTP/1.1 through H1Pool: max_connections, the
        keep-alive expiry and the timeouts carry over; probes keep their httpx pool."""
        http = HttpConfig(max_connections=1108, read_timeout_ms=7000, connect_timeout_ms=900)
        upstream = build_upstream(http, base_url="http://engine", max_connections=1108)
        assert "h1" == upstream.streams_via
        pool = upstream.h1
        assert pool is not None and pool is upstream.h1  # one, built once
        assert (1108, KEEPALIVE_EXPIRY_S, 0.9, 7.0, None) == (
            pool._slots,  # type: ignore[attr-defined]
            pool._expiry_s,  # type: ignore[attr-defined]
            pool._connect_timeout_s,  # type: ignore[attr-defined]
            pool._read_timeout_s,  # type: ignore[attr-defined]
            pool._ssl,  # type: ignore[attr-defined]
        )
        assert 4 == pool_limits(upstream.probe)[0]
        await upstream.aclose()

    async def test_proxied_upstreams_stream_through_one_aiohttp_session(self) -> None:
        """Behind a configured proxy an engine streams through aiohttp: max_connections, the
        keep-alive expiry, TLS verification and the proxy carry over."""
        http = HttpConfig(
            max_connections=1108,
            read_timeout_ms=7000,
            connect_timeout_ms=900,
            proxy="http://proxy.internal:3128",
        )
        upstream = build_upstream(http, base_url="http://engine", max_connections=1108)
        assert "aiohttp" == upstream.streams_via
        session = upstream.session
        assert session is not None and session is upstream.session  # one, built once
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert (1108, 0, KEEPALIVE_EXPIRY_S) == (
            connector.limit,
            connector.limit_per_host,
            connector._keepalive_timeout,  # type: ignore[attr-defined]
        )
        # Waiting for a pooled connection is not connecting: only the handshake is timed.
        # Silence between reads is watched by the upstream (no timer per chunk in aiohttp).
        assert (7.0, None, 0.9, None) == (
            upstream.read_timeout_s,
            session.timeout.sock_read,
            session.timeout.sock_connect,
            session.timeout.connect,
        )
        assert connector._ssl.verify_mode == ssl.CERT_REQUIRED  # type: ignore[attr-defined]
        assert "http://proxy.internal:3128" == str(session._default_proxy)  # type: ignore[attr-defined]
        await upstream.aclose()
        assert session.closed

    async def test_keep_alive_expires_before_engine_idle_timeouts(self) -> None:
        """Idle connections go before the 5 s idle timeout engine HTTP servers use."""
        upstream = build_upstream(HttpConfig(), base_url="https://engine", max_connections=8)
        streams = upstream._streams  # type: ignore[attr-defined]
        assert KEEPALIVE_EXPIRY_S == pool_limits(streams)[2]
        assert KEEPALIVE_EXPIRY_S < 5.0
        await upstream.aclose()

    async def test_probes_are_not_queued_behind_streams(self) -> None:
        """With every stream connection held, a health probe still answers at once: probes
        have a pool of their own, so a replica at its connection limit stays Ready."""
        behaviour = Behaviour(hang_before_first_token=True)
        async with fake_and_adapter(
            "llamacpp", behaviour, max_connections=2, connect_timeout_ms=300
        ) as (fake, adapter):
            assert isinstance(adapter, HttpAdapter)
            probes_before = len(fake.requests)

            async def hold(task_id: str) -> None:
                async for _ in adapter.submit(request(task_id=task_id)):
                    pass

            holders = [asyncio.create_task(hold(f"t{i}")) for i in range(2)]
            try:
                for _ in range(200):
                    if len(fake.requests) - probes_before >= 2:
                        break
                    await asyncio.sleep(0.01)
                assert 2 == len(fake.requests) - probes_before
                health = await adapter.health()
            finally:
                for task in holders:
                    task.cancel()
                await asyncio.gather(*holders, return_exceptions=True)
        assert (True, True) == (health.live, health.ready)
        assert adapter.upstream.probe is not adapter.upstream._streams  # type: ignore[attr-defined]


TRANSPORT_ERRORS: list[tuple[Exception, type[WorkerError]]] = [
    (httpx.ConnectError("refused"), EngineUnreachable),
    (httpx.ConnectTimeout("slow"), WorkerUnavailable),
    (httpx.PoolTimeout("full"), WorkerUnavailable),
    (httpx.ReadTimeout("silent"), DecodeTimeout),
    (TimeoutError(), DecodeTimeout),
    (httpx.RemoteProtocolError("incomplete chunked read"), WorkerReset),
    (httpx.ReadError("reset by peer"), WorkerReset),
    (httpx.UnsupportedProtocol("ftp"), WorkerInternal),
    # The token streams' own client (H1Pool).
    (UpstreamUnreachable("refused"), EngineUnreachable),
    (UpstreamConnectTimeout("slow"), WorkerUnavailable),
    (UpstreamBroken("lost mid-response"), WorkerReset),
    (UpstreamSilent("silent"), DecodeTimeout),
]


class TestMapTransportErrors:
    @pytest.mark.parametrize(
        ("raised", "expected"),
        TRANSPORT_ERRORS,
        ids=[type(e).__name__ for e, _ in TRANSPORT_ERRORS],
    )
    def test_translation(self, raised: Exception, expected: type[WorkerError]) -> None:
        """Each httpx failure becomes its WorkerError, chained to the original."""
        mapping = map_transport_errors("vllm", "POST /v1/completions", Redactor(), pool_id="p")
        with pytest.raises(WorkerError) as info, mapping:
            raise raised
        assert expected is type(info.value)
        assert (raised, "vllm", "p") == (
            info.value.__cause__,
            info.value.engine,
            info.value.pool_id,
        )


class TestErrorForStatus:
    @pytest.mark.parametrize(
        ("status", "expected", "retriable"),
        [
            (400, WorkerInvalidParams, False),
            (422, WorkerInvalidParams, False),
            (401, WorkerUnavailable, False),
            (404, WorkerUnavailable, False),
            (429, WorkerUnavailable, True),
            (500, WorkerInternal, False),
            (503, WorkerUnavailable, True),
        ],
    )
    def test_status_mapping(
        self, status: int, expected: type[WorkerError], retriable: bool
    ) -> None:
        """An upstream status maps to the error the client should see, with retry advice."""
        error = error_for_status(status, "m", engine="tgi")
        assert (expected, retriable) == (type(error), error.retriable)


class TestRedactUrl:
    def test_credentials_and_tokens_are_removed(self) -> None:
        """Userinfo and secret-looking query values never survive into a message."""
        url = "https://alice:hunter2@engine.example:8443/v1?api_key=abc123&x=1"
        redacted = redact_url(url, Redactor())
        assert "hunter2" not in redacted and "abc123" not in redacted and "alice" not in redacted
        assert redacted.startswith("https://engine.example:8443/v1?api_key=")


def self_signed_cert(directory: Path) -> tuple[str, str]:
    """cert.pem and key.pem for 127.0.0.1, valid for a day."""
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", "key.pem", "-out", "cert.pem", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        cwd=directory,
        check=True,
        capture_output=True,
    )
    return str(directory / "cert.pem"), str(directory / "key.pem")


class TestTlsUpstreams:
    async def test_both_stream_clients_verify_and_relay_over_tls(self, tmp_path: Path) -> None:
        """An https engine streams through H1Pool (http2 off) or httpx (http2 on): both refuse
        an untrusted certificate with a clear error, and both relay the same tokens once
        verification is turned off for it."""
        fake = FakeLlamaCpp()
        fake.tls = self_signed_cert(tmp_path)
        async with fake:
            tokens: dict[str, list[str]] = {}
            for http2 in (False, True):
                checked = adapter_for("llamacpp", fake.url, fake.model, http={"http2": http2})
                trusting = adapter_for(
                    "llamacpp", fake.url, fake.model, http={"http2": http2, "verify_tls": False}
                )
                try:
                    assert isinstance(checked, HttpAdapter) and isinstance(trusting, HttpAdapter)
                    via = trusting.upstream.streams_via
                    with pytest.raises(WorkerUnavailable, match="certificate"):
                        await collect(checked, request(max_tokens=5))
                    events = await collect(trusting, request(max_tokens=5))
                    tokens[via] = [e.text for e in events if isinstance(e, Tok)]
                finally:
                    await checked.aclose()
                    await trusting.aclose()
        assert {"h1", "httpx"} == set(tokens)
        assert tokens["h1"] == tokens["httpx"] and 5 == len(tokens["httpx"])
