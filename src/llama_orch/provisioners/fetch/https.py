"""``https://`` (and ``http://``) through httpx: redirects, TLS verification, Range resume."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from llama_orch.catalog.refs import ModelRef, UrlRef, safe_relative
from llama_orch.errors import FetchFailed, NotFound, OutboundDenied
from llama_orch.provisioners.fetch.base import (
    Fetched,
    OpenPart,
    keep_validator,
    open_part,
    read_validator,
    validator_path,
)
from llama_orch.provisioners.fetch.resume import (
    DEFAULT_FLOOR,
    Body,
    RateFloor,
    Transient,
    download,
)
from llama_orch.provisioners.policy import OutboundPolicy
from llama_orch.provisioners.progress import PullProgress

_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")
#: Redirects one request follows before the source is taken for a loop.
MAX_REDIRECTS = 10


class HttpsFetcher:
    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        timeout_s: float = 30.0,
        opener: OpenPart = open_part,
        backoff_s: float = 0.2,
        floor: RateFloor = DEFAULT_FLOOR,
    ) -> None:
        self.verify = verify
        self.timeout_s = timeout_s
        self.opener = opener
        self.backoff_s = backoff_s
        self.floor = floor

    def endpoint(self, ref: ModelRef) -> tuple[str, str]:
        assert isinstance(ref, UrlRef)
        return ref.scheme, ref.host

    def fetch(
        self, ref: ModelRef, stage: Path, progress: PullProgress, outbound: OutboundPolicy
    ) -> Fetched:
        assert isinstance(ref, UrlRef)
        name = urlsplit(ref.url).path.rstrip("/").rsplit("/", 1)[-1] or "download"
        final = stage / safe_relative(name, _shown(ref.url))
        validator = validator_path(final)
        etag: dict[str, str] = {}
        # Redirects are followed here, not by httpx, so each hop passes the outbound policy:
        # a source may not send the download to a host or scheme the operator did not allow.
        with httpx.Client(
            verify=self.verify, follow_redirects=False, timeout=self.timeout_s
        ) as client:

            def open_body(offset: int) -> Body:
                headers = {"Accept-Encoding": "identity"}
                kept = read_validator(validator) if offset else None
                if kept is None:
                    offset = 0  # bytes of an unknown revision are never resumed onto
                else:
                    headers["Range"] = f"bytes={offset}-"
                    headers["If-Range"] = kept
                response = _get(client, ref.url, headers, outbound)
                if response.status_code == 404:
                    response.close()
                    raise NotFound(f"{_shown(ref.url)} answered 404; check the URL")
                if response.status_code == 416 and offset:
                    # The bytes kept from an earlier try reach past the end: the file changed
                    # (or the try ended just before its rename). Start over from byte 0.
                    response.close()
                    return open_body(0)
                if response.status_code >= 500 or response.status_code in (408, 429):
                    response.close()
                    raise Transient(f"HTTP {response.status_code}")
                if response.status_code not in (200, 206):
                    response.close()
                    raise FetchFailed(f"{_shown(ref.url)} answered HTTP {response.status_code}")
                if "etag" in response.headers:
                    etag["etag"] = response.headers["etag"].strip('"')
                resumed = response.status_code == 206
                if resumed and _starts_elsewhere(response, offset, ref.url):
                    # Bytes from elsewhere in the file (a broken cache or mirror): appending
                    # them would register a file that never existed. Fetch it whole instead.
                    response.close()
                    return open_body(0)
                if not resumed:
                    # Recorded before the first byte lands, so kept bytes always have one.
                    try:
                        value = response.headers.get("etag", "")
                        if not value or value.startswith("W/"):  # If-Range takes strong ones
                            value = response.headers.get("last-modified", "")
                        keep_validator(validator, value)
                    except OSError:
                        response.close()
                        raise
                length = response.headers.get("content-length")
                total = None if length is None else int(length) + (offset if resumed else 0)
                return Body(total, resumed, _chunks(response), response.close)

            sha = download(
                final,
                open_body,
                progress,
                opener=self.opener,
                backoff_s=self.backoff_s,
                floor=self.floor,
            )
        source = {"url": _shown(ref.url), **etag}
        return Fetched(path=final, source=source, computed_sha256=sha)


def _get(
    client: httpx.Client, url: str, headers: dict[str, str], outbound: OutboundPolicy
) -> httpx.Response:
    """GET ``url``, following up to MAX_REDIRECTS redirects that the policy allows."""
    target = httpx.URL(url)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = client.send(
                client.build_request("GET", target, headers=headers), stream=True
            )
        except httpx.TransportError as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from exc
        if not response.has_redirect_location:
            return response
        response.close()
        try:
            target = response.url.join(response.headers["location"])
        except httpx.InvalidURL as exc:
            raise FetchFailed(f"{_shown(url)} redirects to an invalid URL: {exc}") from exc
        if target.scheme not in ("http", "https"):
            raise OutboundDenied(
                f"{_shown(url)} redirects to a {target.scheme}: URL; a download follows "
                "redirects to http and https only",
                hint="pull from the URL the file really lies at",
            )
        outbound.check(target.scheme, target.host)
    raise FetchFailed(
        f"{_shown(url)} redirects more than {MAX_REDIRECTS} times (a redirect loop)",
        hint="pull from the URL the file really lies at",
    )


def _starts_elsewhere(response: httpx.Response, offset: int, url: str) -> bool:
    """True when a 206's ``Content-Range: bytes START-END/LENGTH`` does not start at
    ``offset``; FetchFailed when that offset is 0: a source answering a request for the whole
    file with part of it would be asked again for ever."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    if match is not None and int(match.group(1)) == offset:
        return False
    if offset:
        return True
    response.close()
    raise FetchFailed(
        f"{_shown(url)} answered a request for the whole file with HTTP 206 and "
        f"Content-Range {response.headers.get('content-range')!r}, not the file from byte 0",
        hint="pull from another URL; the server or a cache in front of it serves parts of "
        "files in place of whole ones",
    )


def _shown(url: str) -> str:
    """``url`` for messages: without its query, which may carry a token."""
    return url.split("?", 1)[0]


def _chunks(response: httpx.Response) -> Iterator[bytes]:
    # What each network read returned (up to 64 KiB), not re-chunked: the rate floor must see
    # a trickle as it arrives, and a fixed chunk size would wait for it to fill first.
    try:
        yield from response.iter_bytes()
    except httpx.TransportError as exc:
        raise Transient(f"connection lost: {exc}") from exc
