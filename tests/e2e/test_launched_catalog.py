"""A launched engine whose model is a catalog ref: the pool's ``hf:`` model is pulled from a
Hugging Face Hub (a local, protocol-faithful one) into the catalog at start-up, the fake
llama-server is launched on the catalog's copy once it is there, and it serves a task."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llama_orch.catalog import CatalogStore
from llama_orch.config import Config
from tests.support.fake_hf_hub import HubRepo, HubState, fake_hf_hub
from tests.support.launched import (
    LaunchedSetup,
    launched_setup,
    llama_task,
    process_of,
    wait_health,
)
from tests.support.server import running_server
from tests.support.threaded_server import serve_in_thread

REF = "hf:org/tiny/tiny.gguf"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[LaunchedSetup]:
    with launched_setup(tmp_path) as s:
        yield s


@pytest.fixture
def hub() -> Iterator[tuple[str, HubState]]:
    state = HubState()
    with serve_in_thread(fake_hf_hub(state)) as port:
        yield f"http://127.0.0.1:{port}", state


def hub_config(setup: LaunchedSetup, endpoint: str, model: str = REF) -> Config:
    raw: dict[str, Any] = setup.config(setup.pool(model=model)).model_dump(mode="json")
    raw["catalog"]["hf_endpoint"] = endpoint
    # The hub here is plain HTTP on loopback; the engine archive stays on HTTPS.
    raw["network_policy"]["allowed_schemes"] = ["https", "http"]
    return Config.model_validate(raw)


class TestLaunchedFromTheCatalog:
    async def test_hf_model_is_pulled_then_launched(
        self, setup: LaunchedSetup, hub: tuple[str, HubState]
    ) -> None:
        """The hf: model lands in the catalog; the engine runs on that file and serves."""
        endpoint, state = hub
        state.repos["org/tiny"] = HubRepo(
            files={"tiny.gguf": setup.model.read_bytes()}, lfs={"tiny.gguf"}
        )
        async with running_server(hub_config(setup, endpoint)) as server:
            health = await wait_health(server, "lp", lambda h: bool(h["ready"]))
            entry = CatalogStore(setup.tmp / "catalog").get(REF)
            assert entry is not None and "pass" == entry.verification
            log = (setup.tmp / "run" / "logs" / "lp-r0.log").read_text()
            assert entry.local_path in log
            # Waiting for the pull is not an engine failure.
            assert 0 == health["restart_count"]
            assert process_of(health)["running"]
            body = llama_task(REF, max_tokens=4)
            assert 202 == (await server.submit(body)).status_code
            assert "end" == (await server.stream(body["task_id"]))[-1][0]
        assert 1 == state.downloads

    async def test_hf_model_the_hub_lacks_keeps_the_gate_closed(
        self, setup: LaunchedSetup, hub: tuple[str, HubState]
    ) -> None:
        """A pull that fails leaves the pool Unready, saying why and how to fetch it."""
        endpoint, _ = hub
        async with running_server(hub_config(setup, endpoint)) as server:
            health = await wait_health(
                server, "lp", lambda h: "llorch models pull" in (h["last_error"] or "")
            )
            assert not health["ready"]
            assert process_of(health)["pid"] is None
            assert not (setup.tmp / "run" / "logs" / "lp-r0.log").exists()


class TestReloadToACatalogModel:
    async def test_reload_to_a_pulled_hf_model(
        self, setup: LaunchedSetup, hub: tuple[str, HubState]
    ) -> None:
        """A launched pool on a local file reloads to an hf: model pulled through the catalog
        API (not before: that is a 400 naming the pull); the pool then serves it, and its
        catalog gate follows the new model."""
        endpoint, state = hub
        state.repos["org/tiny"] = HubRepo(
            files={"tiny.gguf": setup.model.read_bytes() + b"\0" * 64}, lfs={"tiny.gguf"}
        )
        async with running_server(hub_config(setup, endpoint, str(setup.model))) as server:
            await wait_health(server, "lp", lambda h: bool(h["ready"]))
            missing = await server.client.post("/v1/pools/lp/reload", json={"new_model_ref": REF})
            assert 400 == missing.status_code
            assert f"llorch models pull {REF}" in missing.json()["message"]
            pulled = await server.client.post("/v1/catalog/models", json={"ref": REF})
            assert 202 == pulled.status_code, pulled.text
            entry = await wait_model(server, REF)
            reload = await server.client.post("/v1/pools/lp/reload", json={"new_model_ref": REF})
            assert 202 == reload.status_code, reload.text
            health = await wait_health(
                server, "lp", lambda h: (h["last_operation"] or {}).get("state") == "done"
            )
            assert (REF, True) == (health["model_id"], health["ready"])
            assert "pass" == entry["verification"]
            body = llama_task(REF, max_tokens=3)
            assert 202 == (await server.submit(body)).status_code
            assert "end" == (await server.stream(body["task_id"]))[-1][0]
            # The catalog gate now watches the new model: retiring it unreadies the pool.
            retire = await server.client.post(
                f"/v1/catalog/models/{REF}/state", json={"state": "Retired"}
            )
            assert 202 == retire.status_code
            await wait_health(server, "lp", lambda h: "Retired" in (h["last_error"] or ""))


async def wait_model(server: Any, model_id: str) -> dict[str, Any]:
    """The catalog entry once its pull is done."""
    for _ in range(400):
        model: dict[str, Any] = (await server.client.get(f"/v1/catalog/models/{model_id}")).json()
        if model["state"] == "Active":
            return model
        assert (model.get("pull") or {}).get("state") != "failed", model
        await asyncio.sleep(0.05)
    raise AssertionError(f"{model_id} never arrived: {model}")
