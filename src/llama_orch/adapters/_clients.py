"""Connections to one upstream engine: the probes' httpx pool and the token streams' client.

- ``build_client``: one pooled ``httpx.AsyncClient`` (keep-alive, HTTP/2 where the upstream offers
  it via ALPN, TLS verification on, proxies only when configured).
- ``build_upstream``: one upstream as ``UpstreamClients``: the probes' httpx pool, and for token
  streams one of: the lean HTTP/1.1 client of ``_h1`` (``H1Pool``: plain HTTP/1.1 and https
  upstreams without HTTP/2), one ``aiohttp`` session (upstreams behind a configured proxy), or
  one ``build_client`` pool (upstreams that may negotiate HTTP/2, and tests that inject an httpx
  transport).

Opening a stream tells "the engine is unreachable" (connection refused: fails at once) from
"connecting took longer than ``connect_timeout_ms``" (often this process being too busy to see
the connection complete, or the engine's listen backlog overflowing under a burst). The request
was not sent in the second case, so it is tried again, with jittered backoff, until the
caller's deadline. At most ``CONNECTS_AT_ONCE`` connections to one upstream are being
established at any time; the others wait their turn, unhurried, instead of flooding the
engine's backlog; established connections are kept alive and reused.

Silence on an ``H1Pool`` stream is watched the same way by the pool itself. Silence on an
aiohttp stream (``read_timeout_ms``) is watched by ``_SilenceWatch``, a timer
that looks at the body's byte count a few times per limit, rather than by aiohttp's
``sock_read``, which cancels and re-arms a timer for every chunk received (a token, for most
engines): it fires no earlier than the limit and at most a quarter of it later.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from llama_orch.adapters._h1 import H1Pool, H1Response
from llama_orch.config import HttpConfig

#: Idle keep-alive connections are dropped after this long: shorter than the 5 s idle timeout
#: common to engine HTTP servers (llama-server, uvicorn), so a request never goes out on a
#: connection the engine has already closed (which would end the task with WORKER_RESET).
KEEPALIVE_EXPIRY_S = 4.0
#: Connections of the probes' own pool: the probe loop sends a few GETs per replica at a time.
PROBE_CONNECTIONS = 4
#: Connections to one upstream being established at once (TCP and TLS handshakes).
CONNECTS_AT_ONCE = 16
#: Backoff between attempts to connect after a connect timeout: full jitter, doubling.
CONNECT_RETRY_FIRST_S = 0.05
CONNECT_RETRY_MAX_S = 1.0


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


#: A connect attempt that timed out: nothing was sent, so trying again is safe.
CONNECT_TIMEOUTS: tuple[type[BaseException], ...] = (
    httpx.ConnectTimeout,
    aiohttp.ConnectionTimeoutError,
)


class UpstreamClients:
    """One upstream's keep-alive connections: the token streams' and the probes'.

    Token streams (``open_stream``) go through one ``H1Pool`` when ``h1`` is given, through
    one aiohttp session when ``sessions`` is given, else through the httpx client ``streams``.
    ``h1`` and ``sessions`` are factories, called once inside the running loop; both clients
    hand over every buffered byte per read, where h11 yields one event per HTTP chunk, and
    engines write one chunk per token. With either, the probe client carries the base URL.

    Probes (health, props, version, metrics) go through ``probe``, a pool of their own: a
    replica streaming at its connection limit, or one whose canceled streams are still closing,
    must still answer its readiness probe instead of queueing it behind token traffic (and
    turning Unready because it is busy).
    """

    __slots__ = (
        "_h1",
        "_h1_factory",
        "_paths",
        "_probe",
        "_session",
        "_session_factory",
        "_streams",
        "_urls",
        "connect_retries",
        "in_flight",
        "read_timeout_s",
    )

    def __init__(
        self,
        streams: httpx.AsyncClient | None,
        probe: httpx.AsyncClient | None = None,
        *,
        sessions: Callable[[], aiohttp.ClientSession] | None = None,
        h1: Callable[[], H1Pool] | None = None,
        read_timeout_s: float | None = None,
    ) -> None:
        if streams is None and ((sessions is None and h1 is None) or probe is None):
            raise ValueError(
                "UpstreamClients needs an httpx client, or a stream client and a probe"
            )
        self._streams = streams
        self._probe = probe
        self._session_factory = sessions
        self._session: aiohttp.ClientSession | None = None
        self._h1_factory = h1
        self._h1: H1Pool | None = None
        #: path -> the path sent to the engine (below the base URL's own path).
        self._paths: dict[str, str] = {}
        #: path -> the absolute URL aiohttp is given (joined as httpx joins it).
        self._urls: dict[str, str] = {}
        #: Streams open now (from the request until the response is closed).
        self.in_flight = 0
        #: Attempts to connect made again after a connect timeout, since start.
        self.connect_retries = 0
        #: Silence allowed between two reads of an H1Pool or aiohttp stream (None: unwatched).
        self.read_timeout_s = read_timeout_s

    @property
    def streams_via(self) -> str:
        """Which client carries token streams: ``h1`` (``H1Pool``), ``aiohttp`` or ``httpx``."""
        if self._h1_factory is not None:
            return "h1"
        return "httpx" if self._session_factory is None else "aiohttp"

    @property
    def h1(self) -> H1Pool | None:
        """The token streams' ``H1Pool`` (created on first use), or None for the others."""
        if self._h1 is None and self._h1_factory is not None:
            self._h1 = self._h1_factory()
        return self._h1

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The token streams' aiohttp session (created on first use), or None for httpx."""
        if self._session is None and self._session_factory is not None:
            self._session = self._session_factory()
        return self._session

    async def open_stream(
        self,
        path: str,
        content: bytes,
        headers: Mapping[str, str],
        *,
        deadline: float | None = None,
    ) -> UpstreamResponse:
        """POST ``content`` and return once the response headers arrived.

        A connect timeout is tried again until ``deadline`` (event-loop time; None: once more
        at most), then re-raised; a refused connection or any other failure is raised at once.
        The caller must ``close()`` the response; a body not read to its end closes the
        connection (which is how engines learn of a cancel), a finished one goes back to the pool.
        """
        loop = asyncio.get_running_loop()
        backoff = CONNECT_RETRY_FIRST_S
        attempts = 0
        while True:
            attempts += 1
            try:
                return await self._open_once(path, content, headers)
            except CONNECT_TIMEOUTS:
                wait = random.uniform(0, backoff)
                out_of_time = attempts >= 2 if deadline is None else loop.time() + wait >= deadline
                if out_of_time:
                    raise
            self.connect_retries += 1
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, CONNECT_RETRY_MAX_S)

    def try_open(
        self, path: str, content: bytes, headers: Mapping[str, str]
    ) -> PendingStream | None:
        """POST ``content`` now if a kept-alive connection is free and no stream waits for one
        (``H1Pool.try_post``), else None: then ``open_stream`` waits or connects. The caller
        must take the response (``PendingStream.response``) or ``discard`` it."""
        h1 = self.h1
        if h1 is None:
            return None
        lean = h1.try_post(self._paths.get(path) or self._path_for(path), content, headers)
        if lean is None:
            return None
        self.in_flight += 1
        return PendingStream(lean, self._closing(lean.close), self._ended)

    def _ended(self) -> None:
        self.in_flight -= 1

    async def _open_once(
        self, path: str, content: bytes, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        h1 = self.h1
        self.in_flight += 1
        try:
            if h1 is not None:
                lean = await h1.post(
                    self._paths.get(path) or self._path_for(path), content, headers
                )
                return UpstreamResponse(
                    lean.status, lean.headers, lean, lean.read, self._closing(lean.close)
                )
            session = self.session
            if session is not None:
                url = self._urls.get(path) or self._url_for(path)
                answer = await session.post(
                    url, data=content, headers=headers, allow_redirects=False
                )
                watch = None
                if self.read_timeout_s is not None:
                    watch = _SilenceWatch(answer.content, self.read_timeout_s)
                return UpstreamResponse(
                    answer.status,
                    answer.headers,
                    answer.content.iter_any(),
                    answer.read,
                    self._closing(_closer(answer, watch)),
                )
            assert self._streams is not None
            request = self._streams.build_request("POST", path, content=content, headers=headers)
            response = await self._streams.send(request, stream=True)
        except BaseException:
            self.in_flight -= 1
            raise
        return UpstreamResponse(
            response.status_code,
            response.headers,
            response.aiter_bytes(),
            response.aread,
            self._closing(response.aclose),
        )

    def _closing(self, close: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def closed() -> None:
            try:
                await close()
            finally:
                self.in_flight -= 1

        return closed

    @property
    def probe(self) -> httpx.AsyncClient:
        """The probes' own pool (the stream client when none was built, as in unit tests)."""
        if self._probe is not None:
            return self._probe
        assert self._streams is not None
        return self._streams

    @property
    def base_url(self) -> httpx.URL:
        return self.probe.base_url

    def _url_for(self, path: str) -> str:
        base = self.base_url
        url = base.copy_with(raw_path=base.raw_path + path.lstrip("/").encode("ascii"))
        # Credentials in the endpoint travel as the session's Authorization header instead.
        self._urls[path] = str(url.copy_with(username=None, password=None))
        return self._urls[path]

    def _path_for(self, path: str) -> str:
        self._paths[path] = self.base_url.raw_path.decode("ascii") + path.lstrip("/")
        return self._paths[path]

    async def aclose(self) -> None:
        if self._h1 is not None:
            await self._h1.aclose()
        if self._streams is not None:
            await self._streams.aclose()
        if self._probe is not None:
            await self._probe.aclose()
        if self._session is not None:
            await self._session.close()


class PendingStream:
    """A generation request already sent (``UpstreamClients.try_open``), its response to come."""

    __slots__ = ("_close", "_ended", "_lean", "_taken")

    def __init__(
        self,
        lean: H1Response,
        close: Callable[[], Awaitable[None]],
        ended: Callable[[], None],
    ) -> None:
        self._lean = lean
        self._close = close
        self._ended = ended
        self._taken = False

    async def response(self) -> UpstreamResponse:
        """The response once its head arrived (the caller's deadline bounds the wait)."""
        self._taken = True
        lean = self._lean
        try:
            await lean.head
        except BaseException:
            await self._close()
            raise
        return UpstreamResponse(lean.status, lean.headers, lean, lean.read, self._close)

    def discard(self) -> None:
        """Close a response nobody took (its task ended before running): the connection
        closes, which the engine reads as a cancel."""
        if not self._taken:
            self._taken = True
            self._lean.close_now()
            self._ended()


@dataclass(slots=True)
class UpstreamResponse:
    """One streaming upstream response, whichever client fetched it."""

    status: int
    #: Case-insensitive, as both clients provide.
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]
    read: Callable[[], Awaitable[bytes]]
    close: Callable[[], Awaitable[None]]


def _closer(
    answer: aiohttp.ClientResponse, watch: _SilenceWatch | None
) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        if watch is not None:
            watch.cancel()
        if answer.content.is_eof():
            answer.release()  # read to the end: the connection is reused
        else:
            answer.close()  # mid-stream: closing the connection is the engine's cancel signal

    return close


class _SilenceWatch:
    """Fails a response body that received nothing for ``limit_s`` with aiohttp's own
    ``SocketTimeoutError`` (mapped as a read timeout). It checks every eighth of the limit
    whether the byte count moved, so a read costs no timer of its own."""

    __slots__ = ("_content", "_handle", "_limit", "_loop", "_period", "_seen", "_since")

    def __init__(self, content: aiohttp.StreamReader, limit_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._content = content
        self._limit = limit_s
        self._period = max(0.005, limit_s / 8)
        self._seen = content.total_bytes
        self._since = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(self._period, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        content, now = self._content, self._loop.time()
        self._handle = None
        if content.is_eof() or content.exception() is not None:
            return
        if content.total_bytes != self._seen:
            self._seen, self._since = content.total_bytes, now
        elif now - self._since >= self._limit:
            content.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))
            return
        self._handle = self._loop.call_later(self._period, self._check)


class _PacedConnector(aiohttp.TCPConnector):
    """A connector that establishes at most ``connects_at_once`` connections at a time.

    The wait for a turn is outside ``sock_connect``: only the handshake itself is timed.
    """

    def __init__(self, *, connects_at_once: int, **options: Any) -> None:
        super().__init__(**options)
        self._connecting = asyncio.Semaphore(connects_at_once)

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        async with self._connecting:
            return await super()._create_connection(*args, **kwargs)


def build_session(
    http: HttpConfig,
    *,
    max_connections: int,
    headers: Mapping[str, str] | None,
    ssl_context: ssl.SSLContext,
) -> aiohttp.ClientSession:
    """The aiohttp session for one upstream's token streams, with the same limits as
    ``build_client``; call it inside the running loop."""
    connector = _PacedConnector(
        connects_at_once=CONNECTS_AT_ONCE,
        limit=max_connections,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_EXPIRY_S,
        ssl=ssl_context,
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        # Waiting for a free pooled connection, or a turn to connect, is not connecting: the
        # caller's first-byte deadline bounds it. Only the handshake has connect_timeout_ms.
        connect=None,
        sock_connect=http.connect_timeout_ms / 1000,
        # Silence between two reads, mid-stream included (httpx's read timeout), is watched
        # by ``_SilenceWatch`` (UpstreamClients.read_timeout_s), not by a timer per chunk.
        sock_read=None,
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
    """``max_connections`` keep-alive connections for one upstream's streams, and the probes'."""
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
    # httpx when it is enabled. Every other upstream streams over HTTP/1.1: through H1Pool, or
    # through aiohttp when a proxy is configured (H1Pool speaks to the engine directly).
    may_h2 = http.http2 and base_url.startswith("https:")
    if transport is not None or may_h2:
        return UpstreamClients(client(max_connections), probe=probe)

    stream_headers = dict(headers or {})
    endpoint = httpx.URL(base_url)
    if endpoint.username or endpoint.password:
        # As httpx does for the probes: endpoint credentials are Basic auth, over any API key.
        stream_headers["authorization"] = aiohttp.encode_basic_auth(
            endpoint.username, endpoint.password
        )

    read_timeout_s = http.read_timeout_ms / 1000
    if http.proxy:

        def sessions() -> aiohttp.ClientSession:
            return build_session(
                http, max_connections=max_connections, headers=stream_headers, ssl_context=context
            )

        return UpstreamClients(None, probe=probe, sessions=sessions, read_timeout_s=read_timeout_s)

    tls = endpoint.scheme == "https"

    def h1() -> H1Pool:
        return H1Pool(
            host=endpoint.host,
            port=endpoint.port or (443 if tls else 80),
            ssl_context=context if tls else None,
            max_connections=max_connections,
            connects_at_once=CONNECTS_AT_ONCE,
            connect_timeout_s=http.connect_timeout_ms / 1000,
            read_timeout_s=read_timeout_s,
            keepalive_expiry_s=KEEPALIVE_EXPIRY_S,
            headers=stream_headers,
        )

    return UpstreamClients(None, probe=probe, h1=h1, read_timeout_s=read_timeout_s)
