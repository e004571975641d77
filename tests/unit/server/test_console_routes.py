"""Which optional endpoints the console lights up for, and what auth lets through unasked."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.auth.policy import is_console_asset
from llama_orch.contracts.console import ConsoleFeatures
from llama_orch.server.console.routes import features_of


async def _ok(_request: object) -> Response:
    return Response()


class TestFeatures:
    def test_absent_endpoints_are_off(self) -> None:
        """A server without drain, reload or a catalog advertises none of them."""
        app = Starlette(routes=[Route("/v1/capabilities", _ok)])
        assert ConsoleFeatures(drain=False, reload=False, catalog=False) == features_of(app)

    def test_served_endpoints_are_on(self) -> None:
        """Each endpoint that exists turns its feature on, whatever its parameter is called."""
        app = Starlette(
            routes=[
                Route("/v1/pools/{id}/drain", _ok, methods=["POST"]),
                Route("/v1/pools/{pool_id}/reload", _ok, methods=["POST"]),
                Route("/v1/catalog/models", _ok),
            ]
        )
        assert ConsoleFeatures(drain=True, reload=True, catalog=True) == features_of(app)


class TestConsoleAssetExemption:
    def test_only_reading_the_page_and_its_files(self) -> None:
        """GET or HEAD of / and /ui/... pass unasked; data, metrics and writes do not."""
        assert is_console_asset("GET", "/") and is_console_asset("HEAD", "/ui/app.js")
        assert not is_console_asset("POST", "/ui/app.js")
        for path in ("/v1/status", "/v1/events", "/metrics", "/v1/capabilities", "/uix"):
            assert not is_console_asset("GET", path), path
