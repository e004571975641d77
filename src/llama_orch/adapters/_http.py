"""The shared HTTP util every engine adapter builds on (SPEC §7.3, D-HTTP-01..03).

- ``build_client``: one pooled ``httpx.AsyncClient`` (keep-alive, HTTP/2 where the upstream offers
  it via ALPN, TLS verification on, proxies only when configured).
- ``build_upstream``: one upstream as ``UpstreamClients``: the probes' httpx pool, and for token
  streams either one ``aiohttp`` session (HTTP/1.1 upstreams) or several small ``build_client``
  pools (upstreams that may negotiate HTTP/2, and tests that inject an httpx transport).
- ``with_retries``: capped, jittered exponential backoff (tenacity) for idempotent calls only.
- ``map_transport_errors``: httpx and aiohttp exceptions -> the ``WorkerError`` tree.
- ``error_for_status``: an upstream HTTP status -> the ``WorkerError`` it means.

Nothing here retries a stream: once a generation request is sent, failures are final (D-HOST-02).
Messages built here never contain headers, and URLs pass through the redactor first (D-HTTP-03).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random_exponential,
)

from llama_orch.config import BackoffConfig, HttpConfig
from llama_orch.errors import (
    DecodeTimeout,
    WorkerError,
    WorkerInternal,
    WorkerInvalidParams,
    WorkerReset,
    WorkerUnavailable,
)
from llama_orch.observability.redaction import Redactor

T = TypeVar("T")

#: What a failed idempotent call may be retried on: the engine was unreachable or too slow.
RETRIABLE: tuple[type[WorkerError], ...] = (WorkerUnavailable, DecodeTimeout, WorkerReset)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` counts the first call too; waits grow from ``initial_s`` by ``factor`` up to
    ``max_s``, with full jitter when ``jitter`` is set."""

    attempts: int = 3
    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    jitter: bool = True

    @classmethod
    def from_config(cls, http: HttpConfig, backoff: BackoffConfig) -> RetryPolicy:
        return cls(
            attempts=http.retries + 1,
            initial_s=backoff.initial_ms / 1000,
            factor=backoff.factor,
            max_s=backoff.max_ms / 1000,
            jitter=backoff.jitter,
        )


RetryHook = Callable[[int, BaseException, float], None]


async def with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: tuple[type[BaseException], ...] = RETRIABLE,
    on_retry: RetryHook | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run an idempotent call, retrying ``retry_on`` failures; the last failure is re-raised."""
    wait = (
        wait_random_exponential(
            multiplier=policy.initial_s, exp_base=policy.factor, max=policy.max_s
        )
        if policy.jitter
        else wait_exponential(multiplier=policy.initial_s, exp_base=policy.factor, max=policy.max_s)
    )

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            delay = state.next_action.sleep if state.next_action else 0.0
            if exc is not None:
                on_retry(state.attempt_number, exc, delay)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, policy.attempts)),
        wait=wait,
        retry=retry_if_exception_type(retry_on),
        reraise=True,
        sleep=sleep,
        before_sleep=before_sleep,
    )
    return await retrying(fn)


#: Idle keep-alive connections are dropped after this long: shorter than the 5 s idle timeout
#: common to engine HTTP servers (llama-server, uvicorn), so a request never goes out on a
#: connection the engine has already closed (which would end the task with WORKER_RESET).
KEEPALIVE_EXPIRY_S = 4.0
#: Connections per httpx pool in ``UpstreamClients``. httpcore's pool re-scans all of its
#: connections (and, for the keep-alive bound, all of them again per connection) on every request
#: and every response close, so its cost grows with the square of its size; small pools keep
#: that scan short at any number of concurrent streams.
SHARD_CONNECTIONS = 16
#: Connections of the probes' own pool: the probe loop sends a few GETs per replica at a time.
PROBE_CONNECTIONS = 4


def build_client(
    http: HttpConfig,
    *,
    base_url: str,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    max_connections: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """One pooled client for one upstream; ``transport`` lets tests pass ``MockTransport``.

    ``max_connections`` overrides ``http.max_connections`` (unset there too: 64); ``ssl_context``
    (built from ``http.verify_tls``) lets several clients share one CA store."""
    connections = max_connections or http.max_connections or 64
    timeout = httpx.Timeout(
        connect=http.connect_timeout_ms / 1000,
        read=http.read_timeout_ms / 1000,
        write=http.read_timeout_ms / 1000,
        pool=http.connect_timeout_ms / 1000,
    )
    limits = httpx.Limits(
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    return httpx.AsyncClient(
        base_url=base_url,
        headers=dict(headers or {}),
        timeout=timeout,
        limits=limits,
        http2=http.http2,
        verify=ssl_context or http.verify_tls,
        # Environment proxies (HTTP_PROXY, ...) would silently reroute engine traffic (D-HTTP-03).
        trust_env=False,
        proxy=http.proxy,
        follow_redirects=False,
        transport=transport,
    )


class UpstreamClients:
    """One upstream's keep-alive connections: the token streams' and the probes'.

    Token streams (``open_stream``) go through one aiohttp session when ``sessions`` is given
    (see below), else through httpx pools (shards) that together hold at most
    ``http.max_connections`` connections, each kept alive for reuse as in a single pool. Each
    stream then takes the shard with the fewest requests in flight, so concurrent streams spread
    evenly and every httpx pool stays at or under ``SHARD_CONNECTIONS``, where its per-request
    scan is cheap.

    ``sessions`` is a factory, called once inside the running loop; aiohttp hands over every
    buffered byte per read, where h11 yields one event per HTTP chunk, and engines write one
    chunk per token. With it there are no shards, and the probe client carries the base URL.

    Probes (health, props, version, metrics) go through ``probe``, a pool of their own: a
    replica streaming at its connection limit, or one whose canceled streams are still closing,
    must still answer its readiness probe instead of queueing it behind token traffic (and
    turning Unready because it is busy).
    """

    __slots__ = ("_busy", "_clients", "_probe", "_session", "_session_factory", "_urls")

    def __init__(
        self,
        clients: list[httpx.AsyncClient],
        probe: httpx.AsyncClient | None = None,
        *,
        sessions: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        if not clients and (sessions is None or probe is None):
            raise ValueError("UpstreamClients needs httpx shards, or a session and a probe")
        self._clients = clients
        self._busy = [0] * len(clients)
        self._probe = probe
        self._session_factory = sessions
        self._session: aiohttp.ClientSession | None = None
        #: path -> the absolute URL aiohttp is given (joined as httpx joins it).
        self._urls: dict[str, str] = {}

    @property
    def streams_via(self) -> str:
        """Which client carries token streams: ``aiohttp`` or ``httpx``."""
        return "httpx" if self._session_factory is None else "aiohttp"

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The token streams' aiohttp session (created on first use), or None for httpx."""
        if self._session is None and self._session_factory is not None:
            self._session = self._session_factory()
        return self._session

    async def open_stream(
        self, path: str, content: bytes, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        """POST ``content`` and return once the response headers arrived.

        The caller must ``close()`` the response; a body not read to its end closes the
        connection (which is how engines learn of a cancel), a finished one goes back to the pool.
        """
        session = self.session
        if session is not None:
            url = self._urls.get(path) or self._url_for(path)
            answer = await session.post(url, data=content, headers=headers, allow_redirects=False)
            return UpstreamResponse(
                answer.status,
                answer.headers,
                answer.content.iter_any(),
                answer.read,
                _closer(answer),
            )
        # The least busy shard, counted busy until the response is closed (a stream's life).
        busy = self._busy
        shard = 0 if len(busy) == 1 else busy.index(min(busy))
        busy[shard] += 1
        client = self._clients[shard]
        try:
            request = client.build_request("POST", path, content=content, headers=headers)
            response = await client.send(request, stream=True)
        except BaseException:
            busy[shard] -= 1
            raise

        async def close() -> None:
            try:
                await response.aclose()
            finally:
                busy[shard] -= 1

        return UpstreamResponse(
            response.status_code, response.headers, response.aiter_bytes(), response.aread, close
        )

    @property
    def probe(self) -> httpx.AsyncClient:
        """The probes' own pool (the first shard when none was built, as in unit tests)."""
        return self._probe if self._probe is not None else self._clients[0]

    @property
    def clients(self) -> list[httpx.AsyncClient]:
        return self._clients

    @property
    def base_url(self) -> httpx.URL:
        return self.probe.base_url

    @property
    def in_flight(self) -> list[int]:
        """Requests in flight per shard (a copy)."""
        return list(self._busy)

    def _url_for(self, path: str) -> str:
        base = self.base_url
        url = base.copy_with(raw_path=base.raw_path + path.lstrip("/").encode("ascii"))
        # Credentials in the endpoint travel as the session's Authorization header instead.
        self._urls[path] = str(url.copy_with(username=None, password=None))
        return self._urls[path]

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
        if self._probe is not None:
            await self._probe.aclose()
        if self._session is not None:
            await self._session.close()


@dataclass(slots=True)
class UpstreamResponse:
    """One streaming upstream response, whichever client fetched it."""

    status: int
    #: Case-insensitive, as both clients provide.
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]
    read: Callable[[], Awaitable[bytes]]
    close: Callable[[], Awaitable[None]]


def _closer(answer: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        if answer.content.is_eof():
            answer.release()  # read to the end: the connection is reused
        else:
            answer.close()  # mid-stream: closing the connection is the engine's cancel signal

    return close


def build_session(
    http: HttpConfig,
    *,
    max_connections: int,
    headers: Mapping[str, str] | None,
    ssl_context: ssl.SSLContext,
) -> aiohttp.ClientSession:
    """The aiohttp session for one upstream's token streams, with the same limits and timeouts
    as ``build_client``; call it inside the running loop."""
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_EXPIRY_S,
        ssl=ssl_context,
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        # Waiting for a pooled connection and connecting (httpx's pool + connect timeouts).
        connect=http.connect_timeout_ms / 1000,
        sock_connect=http.connect_timeout_ms / 1000,
        # Silence between two reads, mid-stream included (httpx's read timeout).
        sock_read=http.read_timeout_ms / 1000,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers=dict(headers or {}),
        # As httpx here: no environment proxies, only a configured one.
        trust_env=False,
        proxy=http.proxy,
        auto_decompress=True,
    )


def build_upstream(
    http: HttpConfig,
    *,
    base_url: str,
    max_connections: int,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> UpstreamClients:
    """``max_connections`` connections to one upstream, in pools of ``SHARD_CONNECTIONS``."""
    total = max_connections
    shards = -(-total // SHARD_CONNECTIONS)
    sizes = [total // shards + (1 if i < total % shards else 0) for i in range(shards)]
    # One TLS context (loading the CA store costs ~10 ms and ~1 MB) serves every client.
    context = httpx.create_ssl_context(verify=http.verify_tls, trust_env=False)

    def client(size: int) -> httpx.AsyncClient:
        return build_client(
            http,
            base_url=base_url,
            headers=headers,
            transport=transport,
            max_connections=size,
            ssl_context=context,
        )

    probe = client(PROBE_CONNECTIONS)
    # An injected transport is httpx's (tests); an https upstream may negotiate HTTP/2 through
    # httpx when it is enabled. Every other upstream streams over HTTP/1.1 through aiohttp.
    may_h2 = http.http2 and base_url.startswith("https:")
    if transport is not None or may_h2:
        return UpstreamClients([client(size) for size in sizes], probe=probe)

    stream_headers = dict(headers or {})
    endpoint = httpx.URL(base_url)
    if endpoint.username or endpoint.password:
        # As httpx does for the probes: endpoint credentials are Basic auth, over any API key.
        stream_headers["authorization"] = aiohttp.encode_basic_auth(
            endpoint.username, endpoint.password
        )

    def sessions() -> aiohttp.ClientSession:
        return build_session(
            http, max_connections=total, headers=stream_headers, ssl_context=context
        )

    return UpstreamClients([], probe=probe, sessions=sessions)


def redact_url(url: str | httpx.URL, redactor: Redactor) -> str:
    """A URL safe for logs and error messages: no userinfo, no secret-looking query values."""
    parsed = httpx.URL(str(url))
    if parsed.userinfo:
        parsed = parsed.copy_with(username=None, password=None)
    return redactor.text(str(parsed))


@contextlib.contextmanager
def map_transport_errors(
    engine: str, where: str, redactor: Redactor, *, pool_id: str | None = None
) -> Iterator[None]:
    """Translate httpx and timeout errors into the ``WorkerError`` tree; ``where`` names the call
    (already redacted: engine and path, never headers)."""
    try:
        yield
    except WorkerError:
        raise
    except (httpx.ConnectTimeout, httpx.PoolTimeout, aiohttp.ConnectionTimeoutError) as exc:
        raise WorkerUnavailable(
            f"{engine}: {where}: connecting timed out", engine=engine, pool_id=pool_id
        ) from exc
    except (httpx.ConnectError, aiohttp.ClientConnectorError) as exc:
        raise WorkerUnavailable(
            f"{engine}: {where}: cannot connect ({redactor.text(str(exc)) or 'refused'})",
            engine=engine,
            pool_id=pool_id,
        ) from exc
    except (httpx.ReadTimeout, httpx.WriteTimeout, TimeoutError) as exc:
        raise DecodeTimeout(
            f"{engine}: {where}: the engine went silent past the read timeout",
            engine=engine,
            pool_id=pool_id,
        ) from exc
    except (
        httpx.RemoteProtocolError,
        httpx.ReadError,
        httpx.WriteError,
        httpx.CloseError,
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientPayloadError,
        aiohttp.ClientOSError,
        aiohttp.ClientConnectionResetError,
    ) as exc:
        raise WorkerReset(
            f"{engine}: {where}: the connection broke ({type(exc).__name__})",
            engine=engine,
            pool_id=pool_id,
        ) from exc
    except (httpx.HTTPError, aiohttp.ClientError) as exc:
        raise WorkerInternal(
            f"{engine}: {where}: {type(exc).__name__}: {redactor.text(str(exc))}",
            engine=engine,
            pool_id=pool_id,
        ) from exc


def error_for_status(
    status: int,
    message: str,
    *,
    engine: str,
    pool_id: str | None = None,
    retry_after_ms: int | None = None,
) -> WorkerError:
    """What an upstream HTTP error status means for the task (docs/adapters.md has the table)."""
    if status in (400, 413, 422):
        return WorkerInvalidParams(message, engine=engine, pool_id=pool_id)
    if status in (401, 403):
        return WorkerUnavailable(
            message + " (check the pool's api_key_env)",
            engine=engine,
            pool_id=pool_id,
            retriable=False,
        )
    if status == 404:
        return WorkerUnavailable(message, engine=engine, pool_id=pool_id, retriable=False)
    if status in (429, 502, 503, 504) or status == 424:
        return WorkerUnavailable(
            message, engine=engine, pool_id=pool_id, retry_after_ms=retry_after_ms
        )
    return WorkerInternal(message, engine=engine, pool_id=pool_id)


def retry_after_ms(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("retry-after")
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw.strip()) * 1000
