"""Pools and tasks on top of the catalog: staging at start, the model_present gate, aliases,
retirement, VRAM fit and the capability estimate, on a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from llama_orch.bootstrap import build_deps
from llama_orch.catalog import CatalogStore, Lifecycle
from llama_orch.catalog.gguf import OVERHEAD_BYTES
from llama_orch.config import PoolConfig, load_settings
from llama_orch.errors import ConfigError, ModelDeprecated
from llama_orch.provisioners.fetch.file import FileFetcher
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.pool_models import PoolModels
from tests.support.gguf_files import tiny_llama_gguf
from tests.support.server import RunningServer, config_of, mock_pool, running_server, task_body


async def pool_health(srv: RunningServer, pool_id: str = "p0") -> dict[str, Any]:
    health: dict[str, Any] = (await srv.client.get(f"/v1/pools/{pool_id}/health")).json()
    return health


async def wait_ready(srv: RunningServer, pool_id: str = "p0") -> dict[str, Any]:
    for _ in range(500):
        health = await pool_health(srv, pool_id)
        if health["ready"]:
            return health
        await asyncio.sleep(0.02)
    raise AssertionError(f"pool {pool_id} never turned Ready: {health['last_error']}")


class TestCatalogBackedPools:
    async def test_staged_at_start_then_served_by_any_spelling(self, tmp_path: Path) -> None:
        """A file: model is registered at start; tasks may name it by another spelling."""
        model = tiny_llama_gguf(tmp_path / "m.gguf")
        config = config_of(
            mock_pool(model=f"file:{model}", ctx=128, slots=3),
            catalog={"root": str(tmp_path / "catalog")},
        )
        async with running_server(config) as srv:
            await wait_ready(srv)
            other_spelling = f"{tmp_path}/./m.gguf"
            body = task_body(model=other_spelling, ctx=64)
            response = await srv.submit(body)
            assert 202 == response.status_code, response.text
            frames = await srv.stream(body["task_id"])
            assert "end" == frames[-1][0]
            caps = (await srv.client.get("/v1/capabilities")).json()
            estimate = caps["pools"][0]["vram_estimate"]
            # 2 layers x 2 kv heads x (16 + 16) x 2 B = 256 B per token; ctx 128 x 3 slots
            assert (20480, 128 * 3 * 256, OVERHEAD_BYTES) == (
                estimate["weights_bytes"],
                estimate["kv_bytes"],
                estimate["overhead_bytes"],
            )
            assert caps["pools"][0]["model_digest"].startswith("sha256:")

    async def test_retired_model_refuses_tasks_and_unreadies(self, tmp_path: Path) -> None:
        """Retiring the pool's model gives MODEL_DEPRECATED and makes the pool Unready."""
        model = tiny_llama_gguf(tmp_path / "m.gguf")
        config = config_of(
            mock_pool(model=f"file:{model}"), catalog={"root": str(tmp_path / "catalog")}
        )
        async with running_server(config) as srv:
            await wait_ready(srv)
            retire = await srv.client.post(
                f"/v1/catalog/models/file:{model}/state", json={"state": "Retired"}
            )
            assert 202 == retire.status_code
            response = await srv.submit(task_body(model=f"file:{model}"))
            assert (400, "MODEL_DEPRECATED") == (response.status_code, response.json()["code"])
            for _ in range(500):
                health = await pool_health(srv)
                if not health["ready"]:
                    break
                await asyncio.sleep(0.02)
            assert "Retired" in (health["last_error"] or "")

    async def test_missing_model_without_outbound_names_the_command(self, tmp_path) -> None:
        """With outbound closed, a missing hf: model leaves the pool Unready with the fix."""
        config = config_of(
            mock_pool(model="hf:org/repo/m.gguf"), catalog={"root": str(tmp_path / "catalog")}
        )
        async with running_server(config) as srv:
            health = await pool_health(srv)
            assert not health["ready"]
            assert "llorch models pull hf:org/repo/m.gguf" in health["last_error"]
            assert [] == CatalogStore(tmp_path / "catalog").list()


class TestVramFit:
    def test_pool_that_cannot_fit_is_refused_at_start(self, tmp_path: Path) -> None:
        """A model in the catalog too large for the pool's GPU fails start-up with numbers."""
        model = tiny_llama_gguf(tmp_path / "m.gguf")
        store = CatalogStore(tmp_path / "catalog")
        ModelProvisioner(store, {"file": FileFetcher()}).ensure_present_str(f"file:{model}")
        config = config_of(
            mock_pool(model=f"file:{model}"),
            catalog={"root": str(store.root)},
            gpus={"simulated": [{"index": 0, "name": "tiny", "vram_mb": 256}]},
        )
        with pytest.raises(ConfigError) as info:
            build_deps(load_settings({}, config=config))
        message = str(info.value)
        # 20480 B weights + KV 4096 ctx x 256 B (1 MiB) + 512 MiB overhead
        assert "pools.0.model" in message and "needs 513 MiB" in message
        assert "GPU 0: 256 MiB" in message


class TestAliases:
    def test_alias_id_and_ref_resolve_to_the_pool_model(self, tmp_path: Path) -> None:
        """A task may name an engine-run pool's model by alias, catalog id or another spelling."""
        model = tiny_llama_gguf(tmp_path / "m.gguf")
        pool = PoolConfig.model_validate(
            {
                "id": "llama",
                "engine": "llamacpp",
                "model": "m.gguf",
                "provisioning": {
                    "mode": "binary",
                    "binary": {"url": "https://x.io/b", "checksum": "sha256:" + "0" * 64},
                    "model": {"name": "tiny"},
                },
            }
        )
        store = CatalogStore(tmp_path / "catalog")
        provisioner = ModelProvisioner(store, {"file": FileFetcher()})
        models = PoolModels([pool], provisioner, tmp_path)
        assert "not in the catalog" in (models.gate("llama", {}) or "")
        provisioner.ensure_present_str(f"file:{model}")
        for name in ("tiny", f"file:{model}", str(model), "m.gguf"):
            assert "m.gguf" == models.canonical(name)
        assert "needs" in (models.gate("llama", {0: 1024}) or "")
        assert None is models.gate("llama", {0: 2**40})
        # Once it fitted, the engine's own use of the VRAM does not unready the pool.
        assert None is models.gate("llama", {0: 1024})
        provisioner.set_state(f"file:{model}", Lifecycle.RETIRED)
        with pytest.raises(ModelDeprecated):
            models.canonical("tiny")
        assert "unknown" == models.canonical("unknown")
