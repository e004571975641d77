"""The one table from error kinds to HTTP (SPEC §6.4), and the handlers that apply it.

No response ever carries a stack trace; an unexpected exception is logged with its trace and
answered with a plain INTERNAL envelope.
"""

from __future__ import annotations

import math

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response

from llama_orch.errors import ErrorKind, InternalError, OrchError, PayloadTooLarge

STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_PARAMS: 400,
    ErrorKind.DEADLINE_UNMET: 400,
    ErrorKind.MODEL_DEPRECATED: 400,
    ErrorKind.UNTRUSTED_ARTIFACT: 400,
    ErrorKind.MISSING_TOKEN: 401,
    ErrorKind.BAD_TOKEN: 401,
    ErrorKind.NON_LOOPBACK_WITHOUT_TOKEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.ADMISSION_REJECT: 429,
    ErrorKind.QUEUE_FULL_DROP_LRU: 429,
    ErrorKind.POOL_UNREADY: 503,
    ErrorKind.POOL_UNAVAILABLE: 503,
    ErrorKind.REPLICA_EXHAUSTED: 503,
    ErrorKind.DECODE_TIMEOUT: 503,
    ErrorKind.WORKER_RESET: 503,
    ErrorKind.INTERNAL: 500,
}

_log = structlog.get_logger("llama_orch.server")


def error_response(error: OrchError) -> Response:
    status = 413 if isinstance(error, PayloadTooLarge) else STATUS[error.kind]
    headers: dict[str, str] = {}
    if status == 429:
        retry_ms = error.retry_after_ms if error.retry_after_ms is not None else 1000
        error.retry_after_ms = retry_ms
        headers["Retry-After"] = str(max(1, math.ceil(retry_ms / 1000)))
        headers["X-Backoff-Ms"] = str(retry_ms)
        if error.policy_label is None:
            error.policy_label = "reject"
    elif status == 503 and error.retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_ms / 1000)))
    return Response(orjson.dumps(error.envelope()), status, headers, media_type="application/json")


async def handle_orch_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OrchError)
    return error_response(exc)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    _log.error(
        "unhandled",
        actor="server",
        action="error",
        target=request.url.path,
        human=f"Fails on {request.method} {request.url.path}: {type(exc).__name__}.",
        exc_info=exc,
    )
    return error_response(
        InternalError(
            "the server hit an unexpected error; it is logged with this request's correlation ID"
        )
    )
