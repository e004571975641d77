"""A llama-orch config whose llama.cpp pool is provisioned through the real binary path: the
fake llama-server in a tar.gz, served over HTTPS with its own CA, sha256 pinned."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_orch.config import Config
from tests.support.engines import engine_archive, tiny_gguf
from tests.support.https_files import HttpsFiles, https_files
from tests.support.server import SIMULATED_GPUS, RunningServer


@dataclass
class LaunchedSetup:
    tmp: Path
    model: Path
    faults: Path
    served: HttpsFiles

    def pool(self, pool_id: str = "lp", **overrides: Any) -> dict[str, Any]:
        archive = self.served.files["/llama-b1.tar.gz"]
        env = {"FAKE_ENGINE_FAULTS": str(self.faults), **overrides.pop("env", {})}
        pool: dict[str, Any] = {
            "id": pool_id,
            "engine": "llamacpp",
            "model": str(self.model),
            "devices": [0],
            "slots": 2,
            "ctx": 1024,
            "provisioning": {
                "mode": "binary",
                "allow_binary_downloads": True,
                "binary": {
                    "url": f"{self.served.url}/llama-b1.tar.gz",
                    "checksum": "sha256:" + hashlib.sha256(archive).hexdigest(),
                },
                "env": env,
            },
            "http": {"probe_timeout_ms": 1000, "retries": 0},
            "backoff": {"initial_ms": 100, "max_ms": 400, "jitter": False},
        }
        pool.update(overrides)
        return pool

    def config(
        self, *pools: dict[str, Any], gpus: dict[str, Any] | None = None, **engines: Any
    ) -> Config:
        return Config.model_validate(
            {
                "gpus": gpus or SIMULATED_GPUS,
                "network_policy": {
                    "allow_outbound": True,
                    "allowed_hosts": ["127.0.0.1"],
                    "allowed_schemes": ["https"],
                },
                "catalog": {
                    "root": str(self.tmp / "catalog"),
                    "trust_policy": {"ca_roots": [str(self.served.ca_path)]},
                },
                "engines": {
                    "cache_dir": str(self.tmp / "engines"),
                    "run_dir": str(self.tmp / "run"),
                    "hang_after_failed_probes": 3,
                    "stop_timeout_ms": 3000,
                    "startup_timeout_ms": 30000,
                    **engines,
                },
                "pools": list(pools) or [self.pool()],
            }
        )


@contextlib.contextmanager
def launched_setup(tmp_path: Path) -> Iterator[LaunchedSetup]:
    files = {"/llama-b1.tar.gz": engine_archive("llama-server")}
    with https_files(files, tmp_path) as served:
        faults = tmp_path / "faults"
        faults.write_text("")
        yield LaunchedSetup(tmp_path, tiny_gguf(tmp_path / "models"), faults, served)


def llama_task(model: Path | str, **overrides: Any) -> dict[str, Any]:
    from tests.support.server import task_body

    return task_body(str(model), **{"engine": "llamacpp", "ctx": 512, **overrides})


async def wait_health(
    server: RunningServer, pool_id: str, predicate: Any, timeout_s: float = 40.0
) -> dict[str, Any]:
    """Poll pool health until ``predicate(health)``; the last health seen."""
    health: dict[str, Any] = {}
    for _ in range(int(timeout_s / 0.05)):
        health = (await server.client.get(f"/v1/pools/{pool_id}/health")).json()
        if predicate(health):
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"pool {pool_id} health never matched: {health}")


def process_of(health: dict[str, Any], index: int = 0) -> dict[str, Any]:
    process: dict[str, Any] = health["metrics"]["replicas"][index]["process"]
    return process
