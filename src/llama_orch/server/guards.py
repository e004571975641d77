"""Request guards against cross-site use and slow clients, as pure ASGI middleware.

- ``Host``: on a loopback bind only loopback names (``localhost``, ``127.0.0.1``, ``[::1]``,
  any port) and the names of ``server.allowed_hosts`` are served, so a page whose name was
  rebound to 127.0.0.1 (DNS rebinding) cannot read answers: 421.
- ``Origin``: a request a browser marks with a foreign origin is refused (403) unless that
  origin is in ``server.allowed_origins``; the server's own origin (a console served from
  ``/``) is allowed.
- ``Content-Encoding``: a request body is read as sent, so one in any coding but ``identity``
  (a gzipped body, say) is refused with 415 and ``Accept-Encoding: identity``.
- ``Content-Type``: a request body must be ``application/json``: 415. Browsers send
  ``text/plain`` across origins without asking first; they never send JSON that way. One
  exception: Ollama's routes (``/api/...``) take a body of any type from a caller that sends no
  ``Origin``, because scripts written for Ollama post with ``curl -d`` (form-encoded) and every
  browser marks its POSTs with an ``Origin``.
- Request bodies must arrive within ``server.connections.body_timeout_ms`` of their first
  read, chunked or not; a slower one is answered 408 and its connection closed.
- A path with a trailing slash is redirected to the path without it, with a relative
  ``Location``: the redirect never repeats an untrusted ``Host``.

Refusals carry the error envelope (code ``INVALID_PARAMS``) and the correlation ID.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import orjson
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llama_orch.errors import InvalidParams
from llama_orch.observability.narration import narrate
from llama_orch.server.middleware import PeerRefusal

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_JSON = "application/json"
#: Ollama's API: its clients and documented curl calls post JSON without a JSON content type.
_OLLAMA_PREFIX = "/api/"


class BodyTimeout(Exception):
    """The request body did not arrive in time."""


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """Header values by name; only single-valued headers are read through this."""
    return {key: value for key, value in scope["headers"]}


def host_name(host: str) -> str:
    """``Host`` without its port, lower-cased; ``[::1]`` keeps its brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    name, _, port = host.partition(":")
    return name if port.isdigit() or not port else host


class RequestGuards:
    """Host, Origin, Content-Type and body-time checks, and the trailing-slash redirect."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        loopback_bind: bool,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        body_timeout_s: float = 30.0,
        routes: Sequence[BaseRoute] = (),
        peer_refusal: PeerRefusal | None = None,
    ) -> None:
        self.app = app
        #: Renders a refusal in the shape of the API its path belongs to (the front doors').
        self.peer_refusal = peer_refusal
        self.loopback_bind = loopback_bind
        self.hosts = _LOOPBACK_NAMES | {host_name(h) for h in allowed_hosts}
        self.origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.body_timeout_s = body_timeout_s
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get(b"host", b"").decode("latin-1")
        refusal = self._refusal(scope, headers, host)
        if refusal is not None:
            status, message, extra = refusal
            narrate(
                "server",
                "refuse",
                scope["path"],
                f"Refuses {scope['method']} {scope['path']} with {status}: {message}.",
                level="warning",
                status=status,
            )
            error = InvalidParams(message, retriable=False)
            answer = self.peer_refusal(scope["path"], error, status) if self.peer_refusal else None
            if answer is None:
                await _send_error(scope, send, status, message, headers=extra)
            else:
                answer.raw_headers.extend(extra)
                await answer(scope, receive, send)
            return
        location = self._slash_redirect(scope)
        if location is not None:
            await _send(send, 307, b"", [(b"location", location.encode("latin-1"))])
            return
        await self._serve(scope, receive, send)

    def _refusal(
        self, scope: Scope, headers: dict[bytes, bytes], host: str
    ) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        # granian shows an HTTP/2 request's :authority as its Host. A request without one
        # (HTTP/1.0) carries no name a rebinding page could have chosen.
        if self.loopback_bind and host and host_name(host) not in self.hosts:
            return (
                421,
                f"Host {host[:100]!r} is not served on this loopback address; use localhost or "
                "127.0.0.1, or list the name in server.allowed_hosts",
                [],
            )
        origin = headers.get(b"origin")
        if origin is not None:
            value = origin.decode("latin-1").rstrip("/").lower()
            own = f"{scope.get('scheme', 'http')}://{host.lower()}"
            if value != own and value not in self.origins:
                return (
                    403,
                    f"requests from the web origin {value[:100]!r} are not allowed; list it "
                    "in server.allowed_origins to allow them",
                    [],
                )
        if scope["method"] not in _BODY_METHODS or not _has_body(headers):
            return None
        coding = headers.get(b"content-encoding", b"identity").decode("latin-1")
        if coding.strip().lower() != "identity":
            return (
                415,
                f"Content-Encoding {coding[:100]!r} is not supported; send the body "
                "uncompressed (Content-Encoding: identity, or no Content-Encoding)",
                [(b"accept-encoding", b"identity")],
            )
        if not (origin is None and scope["path"].startswith(_OLLAMA_PREFIX)):
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            media = content_type.split(";", 1)[0].strip().lower()
            if media != _JSON:
                return (
                    415,
                    f"Content-Type must be {_JSON}, got {content_type[:100]!r}"
                    if content_type
                    else f"Content-Type must be {_JSON}",
                    [],
                )
        return None

    def _slash_redirect(self, scope: Scope) -> str | None:
        path: str = scope["path"]
        stripped = path.rstrip("/")
        # A leading "//" would make the Location another host's.
        if path == stripped or not stripped or stripped.startswith("//"):
            return None
        candidate = {**scope, "path": stripped}
        if not any(route.matches(candidate)[0] is not Match.NONE for route in self.routes):
            return None
        query = scope.get("query_string", b"").decode("latin-1")
        return stripped + (f"?{query}" if query else "")

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal deadline, body_done
            if body_done:
                # After the body, receive only waits for the client to leave (a stream's
                # disconnect listener): no deadline.
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.body_timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except BodyTimeout:
            narrate(
                "server",
                "body-timeout",
                scope["path"],
                f"Closes {scope['method']} {scope['path']}: its body did not arrive within "
                f"{self.body_timeout_s:g} s.",
            )
            if not started:
                await _send_error(
                    scope,
                    send,
                    408,
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                    close=True,
                )


def _has_body(headers: dict[bytes, bytes]) -> bool:
    if b"transfer-encoding" in headers:
        return True
    length = headers.get(b"content-length", b"0").strip()
    return length not in (b"", b"0")


async def _send_error(
    scope: Scope,
    send: Send,
    status: int,
    message: str,
    *,
    close: bool = False,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    body = InvalidParams(message, retriable=False).envelope()
    cid = scope.get("state", {}).get("correlation_id")
    if cid:
        body["correlation_id"] = cid
    extra = [(b"content-type", _JSON.encode()), *headers]
    if close:
        extra.append((b"connection", b"close"))
    await _send(send, status, orjson.dumps(body), extra)


async def _send(
    send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [*headers, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
