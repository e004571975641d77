"""Pure ASGI middleware: correlation IDs, auth, redaction of what leaves, and the access log.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses pass straight through. The order
is ``CorrelationMiddleware`` (outermost: every answer, refusals included, carries the ID, is
redacted and is logged once with its identity), then ``AuthMiddleware``.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable

import structlog
from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llama_orch.auth.policy import AuthPolicy, is_console_asset
from llama_orch.errors import AuthError, OrchError
from llama_orch.observability.narration import narrate
from llama_orch.observability.redaction import Redactor
from llama_orch.server.errors import error_response, internal_error, render_error

HEADER = "x-correlation-id"
#: Identity of a request refused by auth; such a request has no identity to log.
ANONYMOUS = "anonymous"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SSE_ERROR = b"event: error\n"
#: JSON bodies this long or longer are redacted off the event loop (a few milliseconds' work
#: on it at most; a thread costs more than the redaction of a shorter one).
OFF_LOOP_BYTES = 64 * 1024
_log = structlog.get_logger("llama_orch.server")
#: (path, error, status) -> the refusal in the shape of the path's API, or None.
PeerRefusal = Callable[[str, OrchError, int | None], Response | None]


def correlation_id_of(scope: Scope) -> str:
    return str(scope.get("state", {}).get("correlation_id", ""))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _header_list(scope: Scope, name: bytes) -> str | None:
    """Every line of a list-valued header, in order, joined as one (RFC 9110 §5.3)."""
    lines = [value.decode("latin-1") for key, value in scope["headers"] if key == name]
    return ", ".join(lines) if lines else None


class _RedactingSend:
    """Puts the correlation ID on the response start, and redacts JSON bodies (buffered: a
    pattern's match may span chunks) and SSE ``error`` frames on the way out.

    Every JSON answer counts, not only 4xx/5xx: a 200 pool health carries ``last_error`` too.

    Token frames pass untouched: a secret never fits in one token frame, and scanning them would
    cost per token. A body chunk of a response that is not held costs one branch: this send is
    called once per frame of every stream.
    """

    __slots__ = ("_cid", "_held", "_redactor", "_send", "_sse", "body", "started", "status")

    def __init__(self, send: Send, redactor: Redactor, cid: str) -> None:
        self._send = send
        self._redactor = redactor
        self._cid = cid
        self._held: Message | None = None
        self._sse = False
        self.body = bytearray()
        self.status = 0
        #: True once a response start reached the server: too late to answer anything else.
        self.started = False

    def _redact(self, data: bytes) -> bytes:
        return self._redactor.text(data.decode("utf-8", "replace")).encode()

    def _redact_in_pieces(self, data: bytes) -> bytes:
        return self._redactor.text_in_pieces(data.decode("utf-8", "replace")).encode()

    async def _redact_body(self, data: bytes) -> bytes:
        """A large body (a trace artifact, a long event list) takes a second or more to
        redact: done on the loop, that would stall every stream the server is sending. It is
        redacted in a worker thread instead, in pieces, so the loop gets the interpreter back
        between them."""
        if len(data) < OFF_LOOP_BYTES:
            return self._redact(data)
        return await asyncio.to_thread(self._redact_in_pieces, data)

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if self._held is None:
                if self._sse and _SSE_ERROR in message.get("body", b""):
                    message = {**message, "body": self._redact(message["body"])}
                await self._send(message)
                return
            self.body += message.get("body", b"")
            if message.get("more_body", False):
                return
            start, self._held = self._held, None
            data = await self._redact_body(bytes(self.body))
            MutableHeaders(scope=start)["content-length"] = str(len(data))
            self.started = True
            await self._send(start)
            await self._send({"type": "http.response.body", "body": data})
            return
        if kind == "http.response.start":
            self.status = message["status"]
            headers = MutableHeaders(scope=message)
            # Every answer, 204 included: a client correlates a cancel or an eviction as much
            # as anything else.
            headers[HEADER] = self._cid
            content_type = headers.get("content-type", "")
            self._sse = content_type.startswith("text/event-stream")
            if content_type.startswith("application/json"):
                self._held = message
                return
            self.started = True
        await self._send(message)


class CorrelationMiddleware:
    """Echo a sane ``X-Correlation-Id`` or mint a UUIDv4; bind it to the logs (OC-CTRL-2052)."""

    def __init__(self, app: ASGIApp, redactor: Redactor | None = None) -> None:
        self.app = app
        self.redactor = redactor or Redactor()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-correlation-id")
        cid = incoming if incoming and _VALID.match(incoming) else str(uuid.uuid4())
        state = scope.setdefault("state", {})
        state["correlation_id"] = cid
        structlog.contextvars.bind_contextvars(correlation_id=cid)
        started = time.perf_counter()
        redacting = _RedactingSend(send, self.redactor, cid)
        try:
            await self.app(scope, receive, redacting)
        except Exception as exc:
            _log.error(
                "unhandled",
                actor="server",
                action="error",
                target=scope["path"],
                human=f"Fails on {scope['method']} {scope['path']}: {type(exc).__name__}.",
                exc_info=exc,
            )
            if not redacting.started:
                redacting.body.clear()
                await error_response(internal_error())(scope, receive, redacting)
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            method, path, status = scope["method"], scope["path"], redacting.status
            narrate(
                "server",
                "request",
                path,
                f"Answers {method} {path} with {status} in {duration_ms:g} ms.",
                method=method,
                status=status,
                duration_ms=duration_ms,
                identity=state.get("identity", ANONYMOUS),
            )
            structlog.contextvars.unbind_contextvars("correlation_id")


class AuthMiddleware:
    """Applies the D-AUTH-01 decision to every HTTP request. Only the console's static assets
    are exempt: they hold no data (metrics, health and capabilities are not, D-AUTH-03)."""

    def __init__(
        self, app: ASGIApp, policy: AuthPolicy, peer_refusal: PeerRefusal | None = None
    ) -> None:
        self.app = app
        self.policy = policy
        #: Renders a refusal in the shape of the API its path belongs to (the front doors');
        #: None, or its None: the task API's envelope.
        self.peer_refusal = peer_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        state = scope.setdefault("state", {})
        if is_console_asset(scope["method"], scope["path"]):
            state["identity"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        try:
            identity = self.policy.authenticate(
                peer=client[0] if client else None,
                authorization=_header(scope, b"authorization"),
                # A proxy appends its own line after any the client sent: all lines count.
                forwarded_for=_header_list(scope, b"x-forwarded-for"),
                path=scope["path"],
            )
        except AuthError as exc:
            state["identity"] = ANONYMOUS
            await self._refuse(exc, scope, receive, send)
            return
        state["identity"] = identity
        structlog.contextvars.bind_contextvars(identity=identity)
        try:
            await self.app(scope, receive, send)
        finally:
            structlog.contextvars.unbind_contextvars("identity")

    async def _refuse(self, exc: AuthError, scope: Scope, receive: Receive, send: Send) -> None:
        cid = correlation_id_of(scope) or None
        narrate(
            "auth",
            "refuse",
            scope["path"],
            f"Refuses {scope['method']} {scope['path']}: {exc.kind.value} ({exc.code_id}).",
            level="warning",
            error_kind=exc.kind.value,
            code_id=exc.code_id,
            correlation_id=cid,
            identity=ANONYMOUS,
        )
        answer = self.peer_refusal(scope["path"], exc, None) if self.peer_refusal else None
        if answer is None:
            answer = render_error(exc, correlation_id=cid).response()
        await answer(scope, receive, send)
