"""The one table from error kinds to HTTP, and ``render_error``, the one function that turns an
error into an answer: the exception handlers, the auth middleware and the catch-all for
unexpected exceptions all use it.

No response ever carries a stack trace; an unexpected exception is logged with its trace and
answered with a plain INTERNAL envelope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from llama_orch.errors import (
    ErrorKind,
    InternalError,
    InvalidParams,
    NotFound,
    OrchError,
    PayloadTooLarge,
)

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
    ErrorKind.DECODE_TIMEOUT: 503,
    ErrorKind.WORKER_RESET: 503,
    ErrorKind.INTERNAL: 500,
}


#: Headers of an error answer that a front door keeps when it writes the body in its peer's
#: shape: retry advice and the auth challenge (lower case).
KEPT_HEADERS = frozenset({"retry-after", "x-backoff-ms", "www-authenticate"})


@dataclass(frozen=True, slots=True)
class RenderedError:
    status: int
    headers: dict[str, str]
    body: bytes

    def response(self) -> Response:
        return Response(self.body, self.status, self.headers, media_type="application/json")


def render_error(
    error: OrchError, *, correlation_id: str | None = None, status: int | None = None
) -> RenderedError:
    """Every error answer: status, headers and the envelope. Pure; ``error`` is not touched.

    ``status`` overrides the kind's status for HTTP-level refusals (405 and the like) that
    keep their own code. A 429 always advises a backoff (1 s unless the error says).
    """
    if status is None:
        status = 413 if isinstance(error, PayloadTooLarge) else STATUS[error.kind]
    body = error.envelope()
    headers: dict[str, str] = {}
    if status == 429:
        retry_ms = error.retry_after_ms if error.retry_after_ms is not None else 1000
        body["retry_after_ms"] = retry_ms
        body.setdefault("policy_label", "reject")
        headers["Retry-After"] = str(max(1, math.ceil(retry_ms / 1000)))
        headers["X-Backoff-Ms"] = str(retry_ms)
    elif status == 503 and error.retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_ms / 1000)))
    elif status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="llama-orch"'
    if correlation_id:
        body["correlation_id"] = correlation_id
    return RenderedError(status, headers, orjson.dumps(body))


def error_response(error: OrchError, *, status: int | None = None) -> Response:
    return render_error(error, status=status).response()


def internal_error() -> InternalError:
    """What an unexpected exception is answered with; its trace goes to the log only."""
    return InternalError(
        "the server hit an unexpected error; it is logged with this request's correlation ID"
    )


async def handle_orch_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OrchError)
    return error_response(exc)


def http_refusal(request: Request, exc: HTTPException) -> tuple[OrchError, int, dict[str, str]]:
    """Starlette's own refusals (no route, wrong method) as an error, its status and headers."""
    if exc.status_code == 404:
        return NotFound("no such endpoint; see GET /openapi/data.yaml"), 404, {}
    message = str(exc.detail)
    allow = (exc.headers or {}).get("Allow")
    if exc.status_code == 405 and allow:
        message = f"{request.method} is not served on {request.url.path}; use {allow}"
    return InvalidParams(message), exc.status_code, dict(exc.headers or {})


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals in the task API's envelope."""
    assert isinstance(exc, HTTPException)
    error, status, headers = http_refusal(request, exc)
    response = error_response(error, status=status)
    response.headers.update(headers)
    return response
