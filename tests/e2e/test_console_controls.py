"""The console's controls in a real browser against the real endpoints of a real in-process
server: the models view lists the catalog and registers a local model through it, the reload
dialog picks from the catalog and shows the server's refusal (a mock pool's engine is not one
llama-orch launches), and drain really drains the pool. The read-only views are tested in
test_console.py."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import playwright.async_api as async_api

from tests.e2e.test_console import fake_llamacpp
from tests.support.browser import CHROMIUM, LAUNCH_ARGS, NEEDS_CHROMIUM, WAIT_MS
from tests.support.gguf_files import tiny_llama_gguf
from tests.support.server import config_of, mock_pool, running_server, task_body

pytestmark = NEEDS_CHROMIUM


@contextlib.asynccontextmanager
async def live_console(url: str) -> AsyncIterator[async_api.Page]:
    """The console at ``url`` in Debian's chromium, once its live feed is connected."""
    async with async_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(WAIT_MS)
            await page.goto(url + "/")
            await async_api.expect(page.locator("#conn")).to_have_text("Live")
            yield page
        finally:
            await browser.close()


async def show_view(page: async_api.Page, view: str) -> None:
    """Open ``view`` from the navigation and wait until it is the one on screen."""
    await page.click(f'nav a[data-view="{view}"]')
    await async_api.expect(page.locator(f"#view-{view}")).to_be_visible()


class TestControls:
    async def test_models_reload_refusal_and_drain(self, tmp_path: Path) -> None:
        """A local model registered from the models view is listed with its state, size,
        digest and verification, and offered by the reload dialog; the reload of a mock pool
        is refused with the server's reason in the dialog; Drain drains the pool."""
        model = tiny_llama_gguf(tmp_path / "tiny.gguf")
        model_id = f"file:{model}"
        shots = tmp_path / "screenshots"
        shots.mkdir()
        config = config_of(mock_pool("p0", "m0"), catalog={"root": str(tmp_path / "catalog")})
        async with running_server(config) as srv:
            async with live_console(srv.url) as page:
                aexpect = async_api.expect

                # Models: the pull form registers a local path through POST /v1/catalog/models.
                await page.click('nav a[data-view="models"]')
                await aexpect(page.locator("#models-empty")).to_be_visible()
                await page.fill("#pull-ref", str(model))
                await page.click("#pull-send")
                await aexpect(page.locator("#pull-status")).to_have_text(f"Registered {model_id}.")
                listed = (await srv.client.get("/v1/catalog/models")).json()["models"]
                assert [model_id] == [m["id"] for m in listed]
                entry = listed[0]
                row = page.locator(f'#models tbody tr[data-key="{model_id}"]')
                await aexpect(row).to_contain_text("Active")
                await aexpect(row).to_contain_text(f"{entry['size_bytes']} B")
                await aexpect(row).to_contain_text(entry["digest"][:19])
                await aexpect(row).to_contain_text("unverified")
                # Verify re-hashes in the background; the table follows the catalog.
                await row.get_by_role("button", name=f"Verify {model_id}").click()
                await aexpect(row).to_contain_text("✓ verified")
                await page.screenshot(path=str(shots / "models.png"), full_page=True)

                # Reload: the catalog's model is offered; the server refuses a mock pool.
                await page.click('nav a[data-view="overview"]')
                card = page.locator('#pools article[data-key="p0"]')
                await card.get_by_role("button", name="Reload…").click()
                option = page.locator("#reload-models option")
                await aexpect(option).to_have_count(1)
                await aexpect(option).to_have_attribute("value", model_id)
                await page.fill("#reload-model", model_id)
                await page.click("#reload-form button[type=submit]")
                refusal = page.locator("#reload-error")
                await aexpect(refusal).to_be_visible()
                await aexpect(refusal).to_contain_text("Reload of p0 refused: INVALID_PARAMS")
                await aexpect(refusal).to_contain_text("does not launch")
                await aexpect(page.locator("#reload")).to_have_attribute("open", "")
                await page.screenshot(path=str(shots / "reload-refused.png"), full_page=True)
                await page.click("#reload-close")

                # Drain: the real endpoint; the card follows the pool's state.
                await card.get_by_role("button", name="Drain").click()
                await aexpect(card.locator(".badge.state")).to_have_text("Draining")
                await aexpect(card).to_contain_text(re.compile(r"drain (running|done)"))
                await page.screenshot(path=str(shots / "drained.png"), full_page=True)
            health = (await srv.client.get("/v1/pools/p0/health")).json()
            assert (True, "drain") == (health["draining"], health["last_operation"]["kind"])
            refused = await srv.submit(task_body())
            assert (503, "POOL_UNREADY") == (refused.status_code, refused.json()["code"])


#: Markup that runs script if it is ever parsed as HTML rather than shown as text.
HOSTILE = '"><img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


class TestHostileText:
    async def test_markup_in_names_paths_and_errors_is_shown_as_text(self, tmp_path: Path) -> None:
        """A pool's model name, a catalog path, a failed registration's error and a prompt
        carrying markup: the console shows each as text, and none of it runs."""
        folder = tmp_path / HOSTILE.replace("/", "")
        folder.mkdir()
        model = tiny_llama_gguf(folder / "m.gguf")
        config = config_of(mock_pool("p0", HOSTILE), catalog={"root": str(tmp_path / "catalog")})
        async with running_server(config) as srv:
            registered = await srv.client.post("/v1/catalog/models", json={"ref": f"file:{model}"})
            assert 201 == registered.status_code
            body = task_body(HOSTILE, prompt=HOSTILE, max_tokens=2)
            assert 202 == (await srv.submit(body)).status_code
            async with live_console(srv.url) as page:
                aexpect = async_api.expect
                card = page.locator('#pools article[data-key="p0"]')
                await aexpect(card).to_contain_text(HOSTILE)
                await show_view(page, "models")
                await aexpect(page.locator("#models tbody")).to_contain_text(str(model))
                await page.fill("#pull-ref", f"{folder}/gone.gguf")
                await page.click("#pull-send")
                await aexpect(page.locator("#pull-status")).to_contain_text(
                    f"{folder}/gone.gguf does not exist"
                )
                # Each view is on screen, with the data it shows, before it is checked.
                await show_view(page, "tasks")
                finished = page.locator(f'#finished tr[data-key="{body["task_id"]}"]')
                await aexpect(finished).to_contain_text("p0")
                await show_view(page, "playground")
                await aexpect(page.locator("#play-pool option")).to_have_text(f"{HOSTILE} (p0)")
                await aexpect(page.locator("#main img, #main script")).to_have_count(0)
                # page.evaluate has no timeout of its own.
                async with asyncio.timeout(WAIT_MS / 1000):
                    assert await page.evaluate("window.pwned") is None


class TestModelIds:
    async def test_verify_reaches_a_model_whose_file_name_holds_url_characters(
        self, tmp_path: Path
    ) -> None:
        """A catalog id is a path and may hold '#', '?' or '%': Verify still reaches its model
        (a '#' or '?' left as is would cut the request's path short)."""
        model = tiny_llama_gguf(tmp_path / "m #1?v=2 50%.gguf")
        model_id = f"file:{model}"
        config = config_of(mock_pool(), catalog={"root": str(tmp_path / "catalog")})
        async with running_server(config) as srv:
            registered = await srv.client.post("/v1/catalog/models", json={"ref": model_id})
            assert 201 == registered.status_code, registered.text
            async with live_console(srv.url) as page:
                await page.click('nav a[data-view="models"]')
                row = page.locator("#models tbody tr").filter(has_text=str(model))
                await row.get_by_role("button").click()
                await async_api.expect(page.locator("#pull-status")).to_have_text(
                    f"Verifying {model_id}: the result shows in the table."
                )
                await async_api.expect(row).to_contain_text("✓ verified")


class TestPlayground:
    async def test_a_pool_whose_model_url_holds_credentials_can_be_played(self) -> None:
        """A pool's model may be a URL with credentials, which the console shows redacted: the
        playground still runs a task there (it sends the model's name without them), and the
        credentials never reach the browser."""
        with fake_llamacpp() as (engine_url, _):
            pool = {
                "id": "p0",
                "engine": "llamacpp",
                "model": "https://user:s3cret@127.0.0.1:9/m.gguf",
                "ctx": 4096,
                "devices": [0],
                "slots": 1,
                "endpoint": engine_url,
                "provisioning": {"mode": "external"},
            }
            async with running_server(config_of(pool)) as srv:
                async with asyncio.timeout(WAIT_MS / 1000):
                    while (await srv.client.get("/v1/status")).json()["pool"]["pools"][0][
                        "state"
                    ] != "Ready":
                        await asyncio.sleep(0.05)
                async with live_console(srv.url) as page:
                    await show_view(page, "playground")
                    await page.select_option("#play-pool", "p0")
                    await page.fill("#play-max", "3")
                    await page.click("#play-send")
                    await async_api.expect(page.locator("#play-status")).to_contain_text(
                        "ended: 3 tokens", timeout=WAIT_MS
                    )
                    assert "s3cret" not in await page.content()
                status = await srv.client.get("/v1/status")
        assert "s3cret" not in status.text
        assert "https://127.0.0.1:9/m.gguf" == status.json()["pool"]["pools"][0]["model_ref"]
