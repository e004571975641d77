"""A pool's model file replaced after it was registered is not what its engine gets to load.

The engine opens the model's path itself; the catalog hashed that path once, at registration.
Before each launch (and a reload) the file at the path is compared with the one hashed: by
identity while unchanged (no byte read: the re-hash counter stays at zero), by a new hash once
it changed, and other bytes are refused with INVALID_PARAMS naming the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.engines import tiny_gguf
from tests.support.launched import (
    LaunchedSetup,
    launched_setup,
    llama_task,
    process_of,
    wait_health,
)
from tests.support.server import RunningServer, running_server

REFUSED = "not the file registered"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[LaunchedSetup]:
    with launched_setup(tmp_path) as s:
        yield s


async def rehashes(server: RunningServer) -> dict[str, float]:
    """Launch-time re-hashes by result, from the server's /metrics."""
    text = (await server.client.get("/metrics")).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "catalog_verifications_total"
                and sample.labels.get("reason") == "changed on disk"
            ):
                counts[sample.labels["result"]] = sample.value
    return counts


def swap_in(model: Path, other: Path) -> None:
    """Rename ``other`` over ``model``, as a careless copy or a hostile hand would."""
    os.replace(other, model)


def _done(health: dict[str, object]) -> bool:
    last = health.get("last_operation") or {}
    return isinstance(last, dict) and last.get("state") in ("done", "rolled_back")


class TestSwappedModelFile:
    async def test_same_size_swap_is_refused_by_reload_and_restart(
        self, setup: LaunchedSetup
    ) -> None:
        model = setup.model
        reload = {"new_model_ref": str(model)}
        async with running_server(setup.config()) as server:
            await wait_health(server, "lp", lambda h: h["ready"])
            # The unchanged file: a reload launches on it without reading it again.
            assert 202 == (await server.client.post("/v1/pools/lp/reload", json=reload)).status_code
            health = await wait_health(server, "lp", _done)
            assert ("done", True) == (health["last_operation"]["state"], health["ready"])
            assert {} == await rehashes(server)
            # Another valid GGUF of the same size takes the file's place.
            other = tiny_gguf(setup.tmp / "other", "tiny-mal")
            assert other.stat().st_size == model.stat().st_size
            swap_in(model, other)
            refused = await server.client.post("/v1/pools/lp/reload", json=reload)
            assert 400 == refused.status_code, refused.text
            body = refused.json()
            assert "INVALID_PARAMS" == body["code"]
            assert REFUSED in body["message"]
            assert f"llorch models verify file:{model}" in body["hint"]
            assert {"fail": 1.0} == await rehashes(server)
            # The running engine was started on the registered bytes and keeps serving them.
            task = llama_task(model, max_tokens=3)
            assert 202 == (await server.submit(task)).status_code
            assert "end" == (await server.stream(task["task_id"]))[-1][0]
            catalog = (await server.client.get(f"/v1/catalog/models/file:{model}")).json()
            assert "fail" == catalog["verification"]
        async with running_server(setup.config()) as server:
            health = await wait_health(server, "lp", lambda h: REFUSED in (h["last_error"] or ""))
            assert not health["ready"]
            assert process_of(health)["pid"] is None
            # Refused on the identity recorded with the failure: not hashed again.
            assert {} == await rehashes(server)

    async def test_truncated_file_is_refused_until_it_is_put_back(
        self, setup: LaunchedSetup
    ) -> None:
        model = setup.model
        original = model.read_bytes()
        config = setup.config(restart_storm={"failures": 1000, "window_s": 60})
        async with running_server(config) as server:
            await wait_health(server, "lp", lambda h: h["ready"])
        cut = setup.tmp / "cut.gguf"
        cut.write_bytes(original[: len(original) // 2])
        swap_in(model, cut)
        async with running_server(config) as server:
            health = await wait_health(server, "lp", lambda h: REFUSED in (h["last_error"] or ""))
            assert not health["ready"]
            assert "llorch models verify" in health["last_error"]
            # The registered bytes back in place: hashed once, then launched and Ready.
            back = setup.tmp / "back.gguf"
            back.write_bytes(original)
            swap_in(model, back)
            await wait_health(server, "lp", lambda h: h["ready"])
            assert 1.0 == (await rehashes(server)).get("pass")
