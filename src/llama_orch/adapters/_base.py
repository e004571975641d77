"""HttpAdapter: the plumbing every HTTP engine adapter shares.

An engine module supplies three things: its probes (``health``, ``props``, ``engine_version``),
``generate_call`` (request -> path and JSON body, mapping every parameter or refusing it), and a
``StreamParser`` that turns one SSE ``data`` payload into token text. This class sends the
request with the stream-establishment timeout, maps failures to ``WorkerError``, decodes the
stream incrementally and enforces the end-of-stream rules of ENGINE_PROTOCOLS.md §6:

- every event is checked for ``error`` before token fields;
- EOF after the engine's terminal event is success, EOF before it is ``WorkerReset``;
- nothing is retried once the request is sent (D-HOST-02).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol

import aiohttp
import httpx
import orjson

from llama_orch.adapters._h1 import H1Response
from llama_orch.adapters._http import (
    PendingStream,
    UpstreamClients,
    UpstreamResponse,
    error_for_status,
    map_transport_errors,
    redact_url,
    retry_after_ms,
)
from llama_orch.adapters._sse import EventTooLarge, SseDecoder
from llama_orch.config import PoolConfig
from llama_orch.contracts.engine import (
    EmbedRequest,
    EmbedResult,
    EngineEvent,
    GenerateRequest,
    TokenSink,
    WorkerHealth,
    WorkerProps,
)
from llama_orch.errors import (
    DecodeTimeout,
    WorkerError,
    WorkerInternal,
    WorkerInvalidParams,
    WorkerReset,
)
from llama_orch.observability.logging import printable
from llama_orch.observability.redaction import Redactor
from llama_orch.vocab import Engine

#: Upstream error bodies quoted in messages are cut to this many characters.
_BODY_QUOTE = 300
#: An embedding or rerank answer may hold this much per text sent, plus ``EMBED_ANSWER_BASE``:
#: a 4096-dimension vector of JSON floats as engines print them is about 100 KiB, so a text may
#: be some 10,000 dimensions. An engine answering more is failed rather than read whole.
EMBED_ANSWER_PER_TEXT: Final = 256 << 10
EMBED_ANSWER_BASE: Final = 16 << 20

#: Of an engine's error answer, at most this much is read: it is only quoted (cut), and an
#: engine that answers an error with an endless body must not fill memory.
_ERROR_BODY_BYTES = 64 << 10
#: Of a probe's answer (health, model list, props, metrics: kilobytes), at most this much is
#: read; an engine whose answer never ends fails the probe instead of filling memory.
PROBE_ANSWER_BYTES: Final = 8 << 20
#: How long to wait for the body's end once the terminal event arrived.
_DRAIN_S = 1.0
#: Headers of a generate request (an adapter may add to them).
GENERATE_HEADERS: Final = {"content-type": "application/json", "accept": "text/event-stream"}
#: Headers of every embedding and rerank request (answered with one JSON document).
_EMBED: Final = {"content-type": "application/json", "accept": "application/json"}
#: Longest engine version kept, in characters. The version becomes a Prometheus label value
#: and a capabilities field: an engine reporting a 100 kB "version" must not make every
#: scrape and every capabilities answer that large.
VERSION_CHARS: Final = 64


def version_text(value: object) -> str | None:
    """An engine's reported version as it may be shown: None when it is not a string, else at
    most VERSION_CHARS printable characters (others written as escapes, ``\\x1b``), a longer
    one cut to end in ``…``."""
    if not isinstance(value, str):
        return None
    shown = printable(value[: VERSION_CHARS + 1])
    if len(shown) > VERSION_CHARS:
        return shown[: VERSION_CHARS - 1] + "…"
    return shown


#: What ``parse_payloads`` gives for a ``data: [DONE]`` event (the only non-JSON payload).
DONE: Final = object()
#: Separator value between batched payloads; random per process so no engine can forge it.
_SEP: Final = secrets.randbits(62)
_SEP_BYTES: Final = b",%d," % _SEP


@dataclass(frozen=True, slots=True)
class Prestarted:
    """A generation request ``HttpAdapter.prestart`` already sent; ``discard`` it if unused."""

    path: str
    pending: PendingStream

    def discard(self) -> None:
        self.pending.discard()


class StreamParser(Protocol):
    """Per-stream state: ``feed`` takes one parsed event (a JSON value, or ``DONE``) and returns
    its token text ('' for none).

    ``done`` turns true on the engine's terminal event; ``eof_is_end`` says that EOF itself is a
    normal end (Triton without a finish reason), so EOF before ``done`` is not a truncation.
    """

    done: bool
    eof_is_end: bool
    summary: dict[str, Any]

    def feed(self, obj: Any) -> str: ...


class ParserBase:
    """The state every engine's ``StreamParser`` keeps; a subclass adds ``feed``."""

    __slots__ = ("done", "engine", "eof_is_end", "pool_id", "redactor", "summary")

    def __init__(
        self, engine: str, pool_id: str, redactor: Redactor, *, eof_is_end: bool = False
    ) -> None:
        self.done = False
        self.eof_is_end = eof_is_end
        self.summary: dict[str, Any] = {}
        self.engine = engine
        self.pool_id = pool_id
        self.redactor = redactor


def malformed(engine: str, data: bytes) -> WorkerInternal:
    return WorkerInternal(
        f"{engine}: malformed stream frame ({len(data)} bytes, not JSON)", engine=engine
    )


def loads(data: bytes, engine: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise malformed(engine, data) from exc


def parse_payloads(payloads: list[bytes], engine: str) -> list[Any]:
    """Parse one chunk's event payloads, in one ``orjson`` call when that is provably the same.

    The payloads are joined into one JSON array with a separator value ``_SEP`` between them;
    the batch is used only when every odd element is that separator. An engine cannot know the
    process-random separator, so a frame that is not one JSON value (which could otherwise merge
    or split across a join) always breaks the pattern, and then every payload is parsed on its
    own: ``[DONE]`` becomes ``DONE``, and the first malformed frame a ``BadFrame`` that ends the
    list, so the events before it still count.
    """
    n = len(payloads)
    if n == 1 and payloads[0][:1] == b"{":
        # One event per chunk is how engines write: skip the batch machinery.
        try:
            return [orjson.loads(payloads[0])]
        except orjson.JSONDecodeError:
            return [BadFrame(malformed(engine, payloads[0]))]
    if n > 1:
        try:
            batch: list[Any] = orjson.loads(b"[" + _SEP_BYTES.join(payloads) + b"]")
        except orjson.JSONDecodeError:
            pass
        else:
            if len(batch) == 2 * n - 1 and batch[1::2].count(_SEP) == n - 1:
                return batch[::2]
    parsed: list[Any] = []
    for payload in payloads:
        if payload == b"[DONE]":
            parsed.append(DONE)
            continue
        try:
            parsed.append(orjson.loads(payload))
        except orjson.JSONDecodeError:
            # Events before the bad frame still count; the stream fails at the bad one.
            parsed.append(BadFrame(malformed(engine, payload)))
            break
    return parsed


class BadFrame:
    """Stands in the parsed list for a payload that is not JSON."""

    __slots__ = ("error",)

    def __init__(self, error: WorkerInternal) -> None:
        self.error = error


class HttpAdapter:
    """Base class; subclasses set ``engine_kind`` and implement the engine-specific parts."""

    engine_kind: ClassVar[Engine]
    #: Headers of every generation request; an engine may add its own.
    generate_headers: ClassVar[Mapping[str, str]] = GENERATE_HEADERS

    def __init__(
        self,
        pool: PoolConfig,
        client: httpx.AsyncClient | UpstreamClients,
        *,
        api_key: str | None = None,
    ) -> None:
        self._pool = pool
        if not isinstance(client, UpstreamClients):
            client = UpstreamClients(client)
        self._upstream = client
        self._redactor = Redactor().with_secret(api_key)
        self._where = redact_url(client.base_url, self._redactor)
        self._version: str | None = None

    @property
    def engine(self) -> Engine:
        return self.engine_kind

    @property
    def pool_id(self) -> str:
        return self._pool.id

    @property
    def upstream(self) -> UpstreamClients:
        """Every pooled client to this upstream."""
        return self._upstream

    # -- engine-specific surface ---------------------------------------------------------------

    async def health(self) -> WorkerHealth:
        raise NotImplementedError

    async def props(self) -> WorkerProps:
        raise NotImplementedError

    async def engine_version(self) -> str:
        raise NotImplementedError

    def generate_call(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def new_parser(self, request: GenerateRequest) -> StreamParser:
        raise NotImplementedError

    def embed_call(self, request: EmbedRequest) -> tuple[str, dict[str, Any]]:
        """The engine's embedding or rerank route and body; engines without one refuse."""
        raise WorkerInvalidParams(
            f"{self.engine.value} pools serve no {request.workload.value} workload through "
            "llama-orch; use a llama.cpp, vLLM, TGI (text-embeddings-inference) or OpenAI pool",
            engine=self.engine.value,
            pool_id=self.pool_id,
        )

    def embed_result(self, request: EmbedRequest, answer: Any) -> EmbedResult:
        """The engine's JSON answer to ``embed_call`` in the common shape.

        Only adapters that route embeddings (override ``embed_call``) get answers to read; for
        the others ``embed_call`` has already refused, and this refuses the same way.
        """
        self.embed_call(request)
        raise WorkerInternal(
            f"{self.engine.value} adapter routes {request.workload.value} calls but cannot "
            "read their answers",
            engine=self.engine.value,
            pool_id=self.pool_id,
        )

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """One embedding or rerank call: the whole answer is one JSON document.

        The answer must hold exactly one result per text, else the call fails: a short or
        padded answer would silently misalign vectors with their inputs.
        """
        path, body = self.embed_call(request)
        engine = self.engine.value
        where = f"POST {path}"
        response = await self._open(path, body, where, headers=_EMBED)
        try:
            if response.status >= 400:
                raise await self._answered_error(response, where)
            content = await self._embed_answer(response, where, len(request.texts))
            try:
                answer = orjson.loads(content)
            except orjson.JSONDecodeError as exc:
                kind = (response.headers.get("content-type") or "no content-type")[:80]
                raise WorkerInternal(
                    self._error(f"{where}: the answer is not JSON ({kind}, {len(content)} bytes)"),
                    engine=engine,
                    pool_id=self.pool_id,
                ) from exc
            try:
                result = self.embed_result(request, answer)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise WorkerInternal(
                    self._error(
                        f"{where}: unexpected answer shape ({type(exc).__name__}: {str(exc)[:200]})"
                    ),
                    engine=engine,
                    pool_id=self.pool_id,
                ) from exc
        finally:
            await response.close()
        expected = len(request.texts)
        got = len(result.scores if request.query is not None else result.vectors)
        if got != expected:
            raise WorkerInternal(
                self._error(f"{where}: {got} results for {expected} inputs"),
                engine=engine,
                pool_id=self.pool_id,
            )
        return result

    async def _embed_answer(self, response: UpstreamResponse, where: str, texts: int) -> bytes:
        """The whole answer to an embedding or rerank call, if it stays within its bound."""
        limit = EMBED_ANSWER_BASE + texts * EMBED_ANSWER_PER_TEXT
        body = bytearray()
        with map_transport_errors(self.engine.value, where, self._redactor, pool_id=self.pool_id):
            async for chunk in response.chunks:
                body += chunk
                if len(body) > limit:
                    raise WorkerInternal(
                        self._error(
                            f"{where}: the answer passed {limit >> 20} MiB, the bound for "
                            f"{texts} text{'' if texts == 1 else 's'} "
                            f"({EMBED_ANSWER_BASE >> 20} MiB plus "
                            f"{EMBED_ANSWER_PER_TEXT >> 10} KiB a text); the rest was not read"
                        ),
                        engine=self.engine.value,
                        pool_id=self.pool_id,
                    )
        return bytes(body)

    def started_data(self, request: GenerateRequest) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self._version is not None:
            data["engine_version"] = self._version
        if request.seed is not None:
            data["seed"] = request.seed
        return data

    # -- shared calls --------------------------------------------------------------------------

    def _error(self, message: str) -> str:
        return f"{self.engine.value} at {self._where}: {self._redactor.text(message)}"

    async def get(self, path: str) -> httpx.Response:
        """One bounded idempotent GET; the host decides about retries.

        Bounded in time as a whole (httpx's timeouts bound each read, so an answer that keeps
        coming would never time out) and in size (``PROBE_ANSWER_BYTES``).
        """
        timeout = self._pool.http.probe_timeout_ms / 1000
        where = f"GET {path}"
        with map_transport_errors(self.engine.value, where, self._redactor, pool_id=self.pool_id):
            async with asyncio.timeout(timeout):
                request = self._upstream.probe.build_request("GET", path, timeout=timeout)
                response = await self._upstream.probe.send(request, stream=True)
                try:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > PROBE_ANSWER_BYTES:
                            raise WorkerInternal(
                                self._error(
                                    f"{where}: the answer passed {PROBE_ANSWER_BYTES >> 20} MiB"
                                ),
                                engine=self.engine.value,
                                pool_id=self.pool_id,
                            )
                finally:
                    await response.aclose()
            # The body is decoded already: its encoding and length no longer describe it.
            headers = [
                (name, value)
                for name, value in response.headers.multi_items()
                if name.lower() not in ("content-encoding", "content-length")
            ]
            return httpx.Response(
                response.status_code, headers=headers, content=bytes(body), request=request
            )

    async def get_json(self, path: str) -> Any:
        response = await self.get(path)
        if response.status_code >= 400:
            raise self.status_error(response, f"GET {path}")
        return loads(response.content, self.engine.value)

    def status_error(self, response: httpx.Response, what: str) -> WorkerError:
        return self.status_error_of(response.status_code, response.content, response.headers, what)

    def status_error_of(
        self, status: int, content: bytes, headers: Mapping[str, str], what: str
    ) -> WorkerError:
        body = content.decode("utf-8", "replace")[:_BODY_QUOTE]
        message = self._error(f"{what} answered HTTP {status}: {body}".rstrip(": "))
        return error_for_status(
            status,
            message,
            engine=self.engine.value,
            pool_id=self.pool_id,
            retry_after_ms=retry_after_ms(headers),
        )

    async def _refusal(self, response: UpstreamResponse, where: str) -> WorkerError | None:
        """What a generation answer that is no token stream means (None: it is one)."""
        if response.status >= 400:
            return await self._answered_error(response, where)
        if response.status >= 300:
            location = response.headers.get("location", "nowhere named")
            return WorkerInternal(
                self._error(
                    f"{where} answered HTTP {response.status}, a redirect to "
                    f"{self._redactor.text(location)}: redirects are not followed; point the "
                    "pool's endpoint at the engine itself"
                ),
                engine=self.engine.value,
                pool_id=self.pool_id,
            )
        unstreamed = not_a_stream(response.headers)
        if unstreamed:
            return await self._unstreamed(response, where, unstreamed)
        return None

    async def _answered_error(self, response: UpstreamResponse, where: str) -> WorkerError:
        """The error an HTTP error answer means, its body's start quoted (the rest unread)."""
        content = await self._body_start(response, where)
        return self.status_error_of(response.status, content, response.headers, where)

    async def _body_start(self, response: UpstreamResponse, where: str) -> bytes:
        """Up to ``_ERROR_BODY_BYTES`` of the body (the rest stays unread)."""
        pieces: list[bytes] = []
        size = 0
        with map_transport_errors(self.engine.value, where, self._redactor, pool_id=self.pool_id):
            async for piece in response.chunks:
                pieces.append(piece)
                size += len(piece)
                if size >= _ERROR_BODY_BYTES:
                    break
        return b"".join(pieces)[:_ERROR_BODY_BYTES]

    async def _unstreamed(self, response: UpstreamResponse, where: str, what: str) -> WorkerError:
        """A 200 answer to a streaming request that is not an event stream: the engine's error
        when the body is one (some gateways answer errors so), else what came instead."""
        engine = self.engine.value
        content = await self._body_start(response, where)
        with contextlib.suppress(orjson.JSONDecodeError):
            document = orjson.loads(content)
            found = first_error(document) if isinstance(document, dict) else None
            if found is not None:
                return in_stream_error(engine, self.pool_id, *found, self._redactor)
        quoted = content.decode("utf-8", "replace")[:_BODY_QUOTE]
        return WorkerInternal(
            self._error(
                f"{where} answered HTTP {response.status} with {what}, not an event stream "
                f"(does the engine stream this route?): {quoted}"
            ),
            engine=engine,
            pool_id=self.pool_id,
        )

    def prestart(self, request: GenerateRequest) -> Prestarted | None:
        """Send the generation request now if a kept-alive connection is free (else None, and
        ``submit`` sends it): the engine starts one event-loop turn before the task's runner
        does. The result goes to ``submit``, or is discarded."""
        path, body = self.generate_call(request)
        pending = self._upstream.try_open(path, orjson.dumps(body), self.generate_headers)
        return None if pending is None else Prestarted(path, pending)

    async def submit(
        self, request: GenerateRequest, prestarted: Prestarted | None = None
    ) -> AsyncGenerator[EngineEvent, TokenSink | None]:
        """The stream with each upstream read's tokens as one ``tokens`` event, or, when a
        ``TokenSink`` is sent in after ``started`` and the engine is read through ``H1Pool``,
        handed to the sink from the connection's callback (no generator step per read)."""
        # One generator, not a wrapper around another: each upstream read costs one step.
        # Closing it (the host does, on cancel) closes the upstream response now.
        engine = self.engine.value
        if prestarted is None:
            path, body = self.generate_call(request)
            where = f"POST {path}"
            response = await self._open(path, body, where, headers=self.generate_headers)
        else:
            where = f"POST {prestarted.path}"
            response = await self._first_byte(where, prestarted.pending.response())
        try:
            refused = await self._refusal(response, where)
            if refused is not None:
                raise refused
            sink = yield EngineEvent("started", data=self.started_data(request))
            parser = self.new_parser(request)
            reading = _Reading(parser, engine, request.max_tokens)
            chunks = response.chunks
            with map_transport_errors(engine, where, self._redactor, pool_id=self.pool_id):
                if sink is not None and isinstance(chunks, H1Response):
                    if not await _push(chunks, reading, sink):
                        return  # the consumer wants no more: closing is the engine's cancel
                else:
                    # One generator step per upstream read: the hot path without a sink.
                    async for chunk in chunks:
                        texts = reading.texts(chunk)
                        if texts:
                            # Tokens before a bad or error frame still count, in order.
                            yield EngineEvent("tokens", texts, reading.index)
                            reading.index += len(texts)
                        if reading.failure is not None:
                            raise reading.failure
                        if parser.done:
                            break
            pending = reading.decoder.pending
            if parser.done:
                if not reading.overran:  # else closing the stream is the engine's cancel
                    await _drain(chunks)
            elif not parser.eof_is_end or pending:
                raise WorkerReset(
                    self._error(
                        f"the stream ended after {reading.index} tokens"
                        " without the engine's final frame"
                        + (" (a partial frame was cut off)" if pending else "")
                    ),
                    engine=engine,
                    pool_id=self.pool_id,
                )
            yield EngineEvent("end", data={"tokens_out": reading.index, **parser.summary})
        finally:
            await response.close()

    async def _open(
        self,
        path: str,
        body: dict[str, Any],
        where: str,
        *,
        headers: Mapping[str, str],
    ) -> UpstreamResponse:
        """Send the generate request; its headers must arrive within ``first_byte_timeout_ms``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._pool.http.first_byte_timeout_ms / 1000
        # Connecting slowly is tried again within the same first-byte deadline.
        opening = self._upstream.open_stream(path, orjson.dumps(body), headers, deadline=deadline)
        return await self._first_byte(where, opening, deadline)

    async def _first_byte(
        self,
        where: str,
        opening: Coroutine[Any, Any, UpstreamResponse],
        deadline: float | None = None,
    ) -> UpstreamResponse:
        """``opening``'s response, whose headers must come within ``first_byte_timeout_ms``."""
        engine = self.engine.value
        first_byte_ms = self._pool.http.first_byte_timeout_ms
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + first_byte_ms / 1000
        with map_transport_errors(engine, where, self._redactor, pool_id=self.pool_id):
            try:
                async with asyncio.timeout_at(deadline) as first_byte:
                    return await opening
            except TimeoutError as exc:
                if not first_byte.expired():
                    raise  # the client's own connect or read timeout: mapped as such
                raise DecodeTimeout(
                    self._error(
                        f"{where}: no response within first_byte_timeout_ms ({first_byte_ms} ms)"
                    ),
                    engine=engine,
                    pool_id=self.pool_id,
                ) from exc

    async def cancel(self, task_id: str) -> None:
        # These engines have no cancel endpoint: closing the stream (which the host does when
        # the dispatcher cancels the task) is the cancel (ENGINE_PROTOCOLS.md §6).
        return None

    async def aclose(self) -> None:
        await self._upstream.aclose()


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read the body's last bytes so the keep-alive connection returns to the pool.

    Bounded: an engine that keeps the connection open after its terminal event only costs the
    connection, and a break after the terminal event is not an error (ENGINE_PROTOCOLS.md §6).
    """
    with contextlib.suppress(httpx.HTTPError, aiohttp.ClientError, TimeoutError):
        async with asyncio.timeout(_DRAIN_S):
            async for _ in chunks:
                pass


def not_a_stream(headers: Mapping[str, str]) -> str | None:
    """What a streaming answer is instead of an event stream, going by its head (None: it is
    one, or says nothing against it). A JSON document, or a body compressed although the
    request asked for none, cannot be read as SSE."""
    kind = headers.get("content-type", "")
    if kind[:16].lower() == "application/json":
        return f"content-type {kind}"
    coding = headers.get("content-encoding", "identity")
    if coding.strip().lower() != "identity":
        return f"content-encoding {coding}"
    return None


def quote(message: str, redactor: Redactor) -> str:
    """An engine's own text as put in an error or a health detail (which reach clients and the
    log): redacted, and cut like an error answer's body."""
    # Redacted before the cut, from a margin past it, so that no secret is cut in half.
    redacted = redactor.text(message[: _BODY_QUOTE * 4])
    if len(redacted) > _BODY_QUOTE or len(message) > _BODY_QUOTE * 4:
        return redacted[:_BODY_QUOTE] + " [cut]"
    return redacted


def in_stream_error(
    engine: str, pool_id: str, message: str, status: int | None, redactor: Redactor
) -> WorkerError:
    """An ``error`` event inside a 200 stream, mapped like the HTTP status it names."""
    text = f"{engine}: the engine reported an error mid-stream: {quote(message, redactor)}"
    if status is None:
        return WorkerInternal(text, engine=engine, pool_id=pool_id)
    return error_for_status(status, text, engine=engine, pool_id=pool_id)


def first_error(obj: Mapping[str, Any]) -> tuple[str, int | None] | None:
    """The message and code of an ``{"error": ...}`` event in any engine's shape, else None."""
    error = obj.get("error")
    if not error:
        return None
    if isinstance(error, Mapping):
        code = error.get("code")
        status = error.get("http_status_code", code)
        return str(error.get("message", error)), status if isinstance(status, int) else None
    return str(error), None


class _Reading:
    """One stream's decoding: each upstream chunk to its token texts, in order. A bad frame or
    the engine's error event sets ``failure``; the tokens before it still count.

    An engine that streams past ``max_tokens`` (it ignored the limit it was sent) is cut there:
    the stream ends as if the engine had stopped for length. Only a token past the limit cuts,
    so an engine's final frame after exactly ``max_tokens`` tokens is still read."""

    __slots__ = ("decoder", "engine", "failure", "index", "limit", "overran", "parser")

    def __init__(self, parser: StreamParser, engine: str, limit: int) -> None:
        self.parser = parser
        self.limit = limit
        #: Cut at ``limit``: the engine is still generating, and closing the stream cancels it.
        self.overran = False
        self.decoder = SseDecoder()
        self.engine = engine
        #: Tokens handed over so far (the next one's index).
        self.index = 0
        self.failure: Exception | None = None

    def texts(self, chunk: bytes) -> list[str]:
        texts: list[str] = []
        try:
            payloads = self.decoder.feed_data(chunk)
        except EventTooLarge as exc:
            self.failure = WorkerInternal(
                f"{self.engine}: malformed stream: {exc}", engine=self.engine
            )
            return texts
        if not payloads:
            return texts
        parser = self.parser
        feed = parser.feed
        for obj in parse_payloads(payloads, self.engine):
            if parser.done:
                continue  # nothing after the terminal event counts
            if type(obj) is BadFrame:
                self.failure = obj.error
                break
            try:
                text = feed(obj)
            except WorkerError as exc:
                self.failure = exc
                break
            except (AttributeError, TypeError, KeyError, IndexError) as exc:
                # JSON, but not of the protocol's shape (``choices`` a string, say).
                self.failure = WorkerInternal(
                    f"{self.engine}: malformed stream frame (JSON of an unexpected shape: "
                    f"{type(exc).__name__})",
                    engine=self.engine,
                )
                break
            if text:
                if self.index + len(texts) >= self.limit:
                    self._cut()
                    break
                texts.append(text)
        return texts

    def _cut(self) -> None:
        parser = self.parser
        parser.done = True
        parser.summary["finish_reason"] = "length"
        self.overran = True


async def _push(chunks: H1Response, reading: _Reading, sink: TokenSink) -> bool:
    """Read the body through ``sink`` until the engine's terminal event or the body's end;
    False when the sink wanted no more. Raises what broke the stream."""
    wanted = True

    def on_chunk(chunk: bytes) -> bool:
        nonlocal wanted
        try:
            texts = reading.texts(chunk)
            if texts:
                index = reading.index
                reading.index += len(texts)
                if not sink(texts, index):
                    wanted = False
                    return False
        except Exception as exc:  # raised below, in the stream's own task
            reading.failure = exc
            return False
        return reading.failure is None and not reading.parser.done

    await chunks.consume(on_chunk)
    if reading.failure is not None:
        raise reading.failure
    return wanted
