"""Real servers for the fetchers: HTTPS with a throwaway CA, a fake HF hub, S3, a registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
import trustme
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llama_orch.catalog import CatalogStore
from llama_orch.provisioners.fetch.file import FileFetcher
from llama_orch.provisioners.fetch.https import HttpsFetcher
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.policy import OutboundPolicy
from tests.support.https_site import HttpsSite, serve_https_site

OPEN = OutboundPolicy(
    allow_outbound=True, allowed_schemes=("file", "http", "https", "hf", "s3", "oci")
)


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_site(tmp_path: Path, tls_ca: trustme.CA) -> Iterator[HttpsSite]:
    with serve_https_site(tmp_path, tls_ca) as site:
        yield site


@pytest.fixture
def store(tmp_path: Path) -> CatalogStore:
    return CatalogStore(tmp_path / "catalog")


def https_provisioner(store: CatalogStore, site: HttpsSite, **kw: object) -> ModelProvisioner:
    fetcher = HttpsFetcher(verify=site.context, backoff_s=0.0)
    return ModelProvisioner(
        store,
        {"file": FileFetcher(), "https": fetcher},
        outbound=kw.pop("outbound", OPEN),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def trickling_source(path: str, gets: list[str | None], finished: list[bool]) -> Starlette:
    """Answers ``path`` (GET, and the HEAD an S3 client sends first) announcing 1 MiB, then
    sends one byte every 50 ms: never silent long enough for a read timeout. ``gets`` records
    each GET's Range; an answer sent to its end (100 bytes) appends to ``finished``, so the
    test ends whatever the client does and can tell whether the client gave up first."""
    headers = {"Content-Length": str(1 << 20), "ETag": '"v1"'}

    async def serve(request: Request) -> Response:
        if request.method == "HEAD":
            return Response(b"", 200, headers)
        gets.append(request.headers.get("range"))

        async def trickle() -> AsyncIterator[bytes]:
            for _ in range(100):
                if await request.is_disconnected():
                    return
                yield b"\0"
                await anyio.sleep(0.05)
            finished.append(True)

        return StreamingResponse(trickle(), 200, headers)

    return Starlette(routes=[Route(path, serve, methods=["GET", "HEAD"])])
