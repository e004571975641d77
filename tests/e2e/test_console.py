"""The web console in a real browser (Debian's chromium through Playwright) against a real
``llorch serve`` on the demo config, plus a llama.cpp fake engine process that the test kills."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import playwright.sync_api as playwright_sync
import pytest
import yaml

from tests.support.browser import CHROMIUM, LAUNCH_ARGS, NEEDS_CHROMIUM, WAIT_MS
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import task_body

expect = playwright_sync.expect

ROOT = Path(__file__).resolve().parents[2]
pytestmark = NEEDS_CHROMIUM
expect.set_options(timeout=WAIT_MS)


@contextlib.contextmanager
def fake_llamacpp() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A llama.cpp fake engine in its own process: killing it is a real engine fault."""
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_orch.testing.fake_engines", "llamacpp", "--model", "fake"],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().decode().strip()
        assert url.startswith("http://"), url
        yield url, process
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def demo_config(engine_url: str) -> dict[str, Any]:
    """examples/demo.yaml (two simulated GPUs, two mock pools) plus a pool on the fake engine."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "examples/demo.yaml").read_text())
    config["pools"].append(
        {
            "id": "gpu1-fake",
            "engine": "llamacpp",
            "model": "fake",
            "ctx": 4096,
            "devices": [1],
            "slots": 1,
            "endpoint": engine_url,
            "provisioning": {"mode": "external"},
            "backoff": {"initial_ms": 1, "max_ms": 10},
            "http": {"probe_timeout_ms": 500},
        }
    )
    return config


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServeProcess, subprocess.Popen[bytes]]]:
    workdir = tmp_path_factory.mktemp("console")
    with fake_llamacpp() as (url, engine), serve_process(demo_config(url), workdir) as server:
        yield server, engine


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder


def open_console(browser: Any, url: str, *, width: int = 1280, height: int = 800) -> Any:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(WAIT_MS)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.requested = requested
    page.goto(url + "/")
    expect(page.locator("#conn")).to_have_text("Live")
    return page


def only_own_host(page: Any, url: str) -> list[str]:
    return [u for u in page.requested if not u.startswith((url + "/", "data:"))]


def submit(url: str, model: str, **overrides: Any) -> str:
    body = task_body(model=model, **overrides)
    response = httpx.post(url + "/v1/tasks", json=body, timeout=10)
    assert 202 == response.status_code, response.text
    return str(body["task_id"])


class TestConsole:
    def test_overview_shows_gpus_and_pools(
        self, stack: tuple[ServeProcess, Any], browser: Any, shots: Path
    ) -> None:
        """Both simulated GPUs and every pool appear, each GPU marked simulated."""
        server, _ = stack
        page = open_console(browser, server.url)
        gpus = page.locator("#gpus article")
        expect(gpus).to_have_count(2)
        expect(gpus.nth(0)).to_contain_text("RTX 3090 (simulated)")
        expect(gpus.nth(1)).to_contain_text("RTX 3060 (simulated)")
        expect(gpus.nth(0).locator(".badge.sim")).to_have_text("simulated")
        expect(gpus.nth(1)).to_contain_text("gpu1-3b/r0")
        for pool in ("gpu0-8b", "gpu1-3b"):
            card = page.locator(f'#pools article[data-key="{pool}"]')
            expect(card).to_contain_text("mock@mock-1.0")
            expect(card.locator(".badge.state")).to_have_text("Ready")
        page.screenshot(path=str(shots / "overview.png"), full_page=True)
        page.emulate_media(color_scheme="dark")
        page.screenshot(path=str(shots / "overview-dark.png"), full_page=True)
        phone = open_console(browser, server.url, width=390, height=844)
        expect(phone.locator("#pools article")).to_have_count(3)
        phone.screenshot(path=str(shots / "overview-phone.png"), full_page=True)
        assert [] == only_own_host(page, server.url) + only_own_host(phone, server.url)
        page.close()
        phone.close()

    def test_playground_streams_tokens(
        self, stack: tuple[ServeProcess, Any], browser: Any, shots: Path
    ) -> None:
        """A prompt sent from the playground shows its queue position, then its tokens."""
        server, _ = stack
        page = open_console(browser, server.url)
        page.click('nav a[data-view="playground"]')
        page.select_option("#play-pool", "gpu0-8b")
        page.fill("#play-max", "12")
        page.click("#play-send")
        expect(page.locator("#play-status")).to_contain_text("ended: 12 tokens")
        assert len(page.locator("#play-out").inner_text().split()) >= 6
        page.screenshot(path=str(shots / "playground.png"), full_page=True)
        # The finished task is listed with its outcome, and its transcript replays.
        page.click('nav a[data-view="tasks"]')
        row = page.locator("#finished tbody tr").first
        expect(row).to_contain_text("end")
        row.get_by_role("button").click()
        expect(page.locator("#transcript-status")).to_contain_text("Ended after 12 tokens")
        page.screenshot(path=str(shots / "transcript.png"), full_page=True)
        assert [] == only_own_host(page, server.url)
        page.close()

    def test_queued_task_is_shown_and_canceled(
        self, stack: tuple[ServeProcess, Any], browser: Any, shots: Path
    ) -> None:
        """Under load a playground task waits at a queue position; Cancel ends its stream."""
        server, _ = stack
        model = "llama-3.2-3b-instruct-q4"
        # Two long tasks fill both slots of gpu1-3b; a third waits in its queue.
        busy = [submit(server.url, model, ctx=4096, max_tokens=4000) for _ in range(2)]
        try:
            page = open_console(browser, server.url)
            page.click('nav a[data-view="playground"]')
            page.select_option("#play-pool", "gpu1-3b")
            page.select_option("#play-priority", "batch")
            page.click("#play-send")
            expect(page.locator("#play-status")).to_contain_text("at queue position 0")
            page.click('nav a[data-view="tasks"]')
            queued = page.locator('#queues [data-key="gpu1-3b"] tbody tr')
            expect(queued).to_have_count(1)
            expect(queued.first).to_contain_text("batch")
            expect(page.locator("#running tbody tr")).to_have_count(2)
            page.screenshot(path=str(shots / "tasks.png"), full_page=True)
            queued.first.get_by_role("button", name="Cancel").click()
            expect(queued).to_have_count(0)
            page.click('nav a[data-view="playground"]')
            expect(page.locator("#play-status")).to_contain_text("canceled after 0 tokens")
            # Running tasks are canceled from the same table.
            page.click('nav a[data-view="tasks"]')
            page.locator("#running tbody tr").first.get_by_role("button").click()
            expect(page.locator("#running tbody tr")).to_have_count(1)
            assert [] == only_own_host(page, server.url)
            page.close()
        finally:
            for task_id in busy:
                httpx.post(f"{server.url}/v1/tasks/{task_id}/cancel", timeout=10)

    def test_pool_turns_unready_when_its_engine_dies(
        self, stack: tuple[ServeProcess, subprocess.Popen[bytes]], browser: Any, shots: Path
    ) -> None:
        """Killing a pool's engine process turns its card Unready with the probe's error."""
        server, engine = stack
        page = open_console(browser, server.url)
        card = page.locator('#pools article[data-key="gpu1-fake"]')
        expect(card.locator(".badge.state")).to_have_text("Ready")
        engine.kill()
        engine.wait()
        expect(card.locator(".badge.state")).to_have_text("Unready")
        expect(card.locator(".err")).to_contain_text("Last error")
        page.screenshot(path=str(shots / "unready.png"), full_page=True)
        page.close()

    def test_keyboard_reaches_the_views_and_buttons(
        self, stack: tuple[ServeProcess, Any], browser: Any
    ) -> None:
        """Tab reaches the skip link and the view tabs; Enter on a tab opens its view."""
        server, _ = stack
        page = open_console(browser, server.url)
        page.keyboard.press("Tab")
        expect(page.locator(":focus")).to_have_text("Skip to content")
        for _ in range(2):
            page.keyboard.press("Tab")
        expect(page.locator(":focus")).to_have_text("Queue & tasks")
        page.keyboard.press("Enter")
        expect(page.locator("#view-tasks")).to_be_visible()
        expect(page.locator("#view-overview")).to_be_hidden()
        page.close()


class TestConsoleAuth:
    def test_page_asks_for_the_token_once(self, tmp_path: Path, browser: Any, shots: Path) -> None:
        """With a token required, the page loads, says 401, and works once given the token."""
        token = "console-test-token-" + uuid.uuid4().hex
        config: dict[str, Any] = yaml.safe_load((ROOT / "examples/demo.yaml").read_text())
        token_file = tmp_path / "token"
        token_file.write_text(token)
        environ = {"AUTH_TOKEN_FILE": str(token_file)}
        with serve_process(config, tmp_path, environ=environ) as server:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(WAIT_MS)
            seen: list[str] = []
            page.on("request", lambda request: seen.append(request.url))
            page.goto(server.url + "/")
            dialog = page.locator("#auth")
            expect(dialog).to_be_visible()
            expect(page.locator("#auth-why")).to_contain_text("401")
            page.screenshot(path=str(shots / "auth.png"))
            page.fill("#auth-token", token)
            page.click("#auth-form button")
            expect(page.locator("#conn")).to_have_text("Live")
            expect(page.locator("#pools article")).to_have_count(2)
            page.reload()
            expect(page.locator("#conn")).to_have_text("Live")
            expect(dialog).not_to_be_visible()
            assert all(token not in url for url in seen)
            page.close()
            assert token not in server.log_path.read_text()

    def test_page_reconnects_after_a_restart(self, tmp_path: Path, browser: Any) -> None:
        """The page shows the loss of the server, then follows a new one on the same port."""
        config: dict[str, Any] = yaml.safe_load((ROOT / "examples/demo.yaml").read_text())
        with serve_process(config, tmp_path) as server:
            page = open_console(browser, server.url)
            port = server.url.rsplit(":", 1)[1]
        expect(page.locator("#conn")).to_contain_text("reconnecting")
        config["server"] = {"bind_addr": f"127.0.0.1:{port}"}
        with serve_process(config, tmp_path, port=int(port)):
            expect(page.locator("#conn")).to_have_text("Live")
            expect(page.locator("#pools article")).to_have_count(2)
        page.close()
