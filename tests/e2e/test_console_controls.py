"""The console's optional controls in a real browser: drain, reload and the models view appear
and work where the server serves those endpoints (stand-ins here, on a real in-process server).
The browser tests without them are in test_console.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.browser import CHROMIUM, LAUNCH_ARGS, NEEDS_CHROMIUM, WAIT_MS
from tests.support.server import config_of, mock_pool, running_server

async_api = pytest.importorskip("playwright.async_api")
pytestmark = NEEDS_CHROMIUM


class TestOptionalControls:
    async def test_drain_reload_and_models_light_up(self, tmp_path: Path) -> None:
        """Where the server serves drain, reload and a catalog, the page shows their buttons
        and view and calls them. The three endpoints here are stand-ins mounted on a real
        in-process server; without them (the tests above) none of it shows."""
        calls: list[tuple[str, dict[str, Any]]] = []
        shots = tmp_path / "screenshots"
        shots.mkdir()
        async with running_server(config_of(mock_pool("p0", "m0"))) as srv:

            async def drain(request: Request) -> Response:
                calls.append(("drain", await request.json()))
                srv.deps.pools.set_draining(request.path_params["pool_id"], True)
                return Response(status_code=202)

            async def reload(request: Request) -> Response:
                calls.append(("reload", await request.json()))
                return Response(status_code=202)

            async def catalog(_request: Request) -> Response:
                return JSONResponse({"models": [CATALOG_ENTRY]})

            assert srv.app is not None
            # In front of the real routes: the catalog's own list would answer first otherwise.
            srv.app.router.routes[:0] = [
                Route("/v1/pools/{pool_id}/drain", drain, methods=["POST"]),
                Route("/v1/pools/{pool_id}/reload", reload, methods=["POST"]),
                Route("/v1/catalog/models", catalog, methods=["GET"]),
            ]
            async with async_api.async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(WAIT_MS)
                aexpect = async_api.expect
                await page.goto(srv.url + "/")
                card = page.locator('#pools article[data-key="p0"]')
                await card.get_by_role("button", name="Reload…").click()
                await aexpect(page.locator("#reload-models option")).to_have_count(1)
                await page.fill("#reload-model", CATALOG_ENTRY["ref"])
                await page.click("#reload-form button[type=submit]")
                await card.get_by_role("button", name="Drain").click()
                await aexpect(card.locator(".badge.state")).to_have_text(
                    "Draining", timeout=WAIT_MS
                )
                await page.click('nav a[data-view="models"]')
                row = page.locator("#models tbody tr")
                await aexpect(row).to_contain_text("hf:acme/tiny@main", timeout=WAIT_MS)
                await aexpect(row).to_contain_text("ready")
                await page.screenshot(path=str(shots / "models.png"), full_page=True)
                await browser.close()
        assert [
            ("reload", {"new_model_ref": "hf:acme/tiny@main"}),
            ("drain", {"deadline_ms": 60000}),
        ] == calls


CATALOG_ENTRY = {
    "ref": "hf:acme/tiny@main",
    "state": "ready",
    "size_bytes": 123_456_789,
    "digest": "sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "verified": True,
}
