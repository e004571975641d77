"""The console's HTTP surface: the page and its assets, ``GET /v1/status``, ``GET /v1/events``.

Assets are read once from the package and served from memory with a strong ETag; every
response carries a Content-Security-Policy that lets the page talk to its own origin only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from llama_orch.contracts.console import ConsoleFeatures
from llama_orch.errors import NotFound
from llama_orch.observability.redaction import Redactor
from llama_orch.pool.gpu_sampler import GpuSampler
from llama_orch.server.console.feed import StatusFeed
from llama_orch.server.console.status import StatusReader
from llama_orch.server.deps import AppDeps
from llama_orch.server.sse import SseResponse

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Optional control endpoints the console lights up for when the server serves them.
_FEATURE_PATHS = {
    "drain": re.compile(r"^/v1/pools/\{[^}]+\}/drain$"),
    "reload": re.compile(r"^/v1/pools/\{[^}]+\}/reload$"),
    "catalog": re.compile(r"^/v1/catalog/models$"),
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of the ``assets`` folder, by name."""
    assets: dict[str, Asset] = {}
    folder = resources.files("llama_orch.server.console").joinpath("assets")
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if not entry.is_file() or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[entry.name] = Asset(body, _TYPES[suffix], etag)
    return assets


ASSETS = load_assets()


def _asset_response(request: Request, name: str) -> Response:
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFound(f"no console asset {name!r}")
    headers = {
        "ETag": asset.etag,
        # Revalidated on every load (a 304 on loopback costs nothing): an upgraded server is
        # never paired with a stale script.
        "Cache-Control": "no-cache",
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, headers=headers, media_type=asset.media_type)


async def index(request: Request) -> Response:
    return _asset_response(request, "index.html")


async def asset(request: Request) -> Response:
    return _asset_response(request, request.path_params["name"])


def feed_of(request: Request) -> StatusFeed:
    feed: StatusFeed = request.app.state.console_feed
    return feed


async def status(request: Request) -> Response:
    body = feed_of(request).read().model_dump_json().encode()
    return Response(body, headers={"Cache-Control": "no-store"}, media_type="application/json")


async def events(request: Request) -> SseResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return SseResponse(feed_of(request).frames(), headers=headers)


routes: list[BaseRoute] = [
    Route("/", index, methods=["GET", "HEAD"]),
    Route("/ui/{name}", asset, methods=["GET", "HEAD"]),
    Route("/v1/status", status, methods=["GET"]),
    Route("/v1/events", events, methods=["GET"]),
]


def features_of(app: Starlette) -> ConsoleFeatures:
    paths = [getattr(route, "path", "") for route in app.routes]
    found = {
        name: any(pattern.match(path) for path in paths) for name, pattern in _FEATURE_PATHS.items()
    }
    return ConsoleFeatures(**found)


def attach(
    app: Starlette,
    deps: AppDeps,
    sampler: GpuSampler,
    *,
    interval_s: float,
    redactor: Redactor | None = None,
) -> StatusFeed:
    """Build the app's status feed; it reports the optional endpoints the app serves."""
    reader = StatusReader(deps, sampler, lambda: features_of(app), int(interval_s * 1000))
    feed = StatusFeed(reader, interval_s=interval_s, heartbeat_s=15.0, redactor=redactor)
    app.state.console_feed = feed
    return feed
