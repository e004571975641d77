"""Engine HTTP failures as the ``WorkerError`` tree, and URLs safe to put in messages.

Messages built here never contain headers, and URLs pass through the redactor first (D-HTTP-03).

The token streams' own HTTP/1.1 client (``_h1``) raises the ``Upstream*`` errors below: each is
a subclass of the httpx transport error of the same meaning, so every handler of those (this
mapping, the connect retry, the drain after a stream's final event) treats them alike.
"""

from __future__ import annotations

import contextlib
import email.utils
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

import aiohttp
import httpx

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


class UpstreamUnreachable(httpx.ConnectError):
    """Connecting failed at once: refused, no route, or the TLS handshake was refused."""


class UpstreamConnectTimeout(httpx.ConnectTimeout):
    """Connecting took longer than the connect timeout; nothing was sent."""


class UpstreamBroken(httpx.ReadError):
    """The connection was lost, or the response was malformed, before the response's end."""


class UpstreamSilent(httpx.ReadTimeout):
    """Nothing arrived on a response body for longer than the read timeout."""


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
        raise EngineUnreachable(
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
        # The stream client's own errors say what broke; the libraries' may quote the peer.
        why = redactor.text(str(exc)) if isinstance(exc, UpstreamBroken) else ""
        raise WorkerReset(
            f"{engine}: {where}: the connection broke ({why or type(exc).__name__})",
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


#: The longest wait an engine's ``Retry-After`` is passed on as (longer advice is noise, and an
#: unbounded number would not fit the 64-bit ``retry_after_ms`` the wire carries).
RETRY_AFTER_MAX_S = 86_400


def retry_after_ms(headers: Mapping[str, str]) -> int | None:
    """An engine's ``Retry-After`` (seconds, or an HTTP date) in ms, at most a day."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isascii() and raw.isdigit():  # isdigit alone also takes "²", which int() refuses
        # int() refuses thousands of digits; anything past 12 is past the cap anyway.
        seconds = float(min(int(raw) if len(raw) <= 12 else RETRY_AFTER_MAX_S, RETRY_AFTER_MAX_S))
    else:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None  # RFC 9110 dates are GMT; one without a zone is not one
        seconds = (when - datetime.now(UTC)).total_seconds()
        seconds = min(max(seconds, 0.0), RETRY_AFTER_MAX_S)
    return int(seconds * 1000)
