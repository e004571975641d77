"""Pure ASGI middleware: correlation IDs, the access log, and the last-resort error answer.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses pass straight through.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llama_orch.errors import InternalError
from llama_orch.server.errors import error_response

HEADER = "x-correlation-id"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_log = structlog.get_logger("llama_orch.server")


def correlation_id_of(scope: Scope) -> str:
    return str(scope.get("state", {}).get("correlation_id", ""))


class CorrelationMiddleware:
    """Echo a sane ``X-Correlation-Id`` or mint a UUIDv4; bind it to the logs (OC-CTRL-2052)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-correlation-id":
                incoming = value.decode("latin-1")
                break
        cid = incoming if incoming and _VALID.match(incoming) else str(uuid.uuid4())
        scope.setdefault("state", {})["correlation_id"] = cid
        structlog.contextvars.bind_contextvars(correlation_id=cid)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if status != 204:
                    MutableHeaders(scope=message)[HEADER] = cid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            _log.error(
                "unhandled",
                actor="server",
                action="error",
                target=scope["path"],
                human=f"Fails on {scope['method']} {scope['path']}: {type(exc).__name__}.",
                exc_info=exc,
            )
            if status == 0:
                response = error_response(
                    InternalError(
                        "the server hit an unexpected error; it is logged with this correlation ID"
                    )
                )
                await response(scope, receive, send_with_id)
        finally:
            state = scope.get("state", {})
            _log.info(
                "request",
                actor="server",
                action="request",
                target=scope["path"],
                method=scope["method"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                identity=state.get("identity"),
            )
            structlog.contextvars.unbind_contextvars("correlation_id")
