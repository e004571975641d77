"""Fixtures of the real llama.cpp checks: the built llama-server, the tiny model, two engines
and one ``llorch serve`` with a pool attached to each (``provisioning: external``)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from llama_orch.provisioners.engine._types import ProvisionError
from tests.real.llama_build import RealLlama, cache_root, ensure_llama_server
from tests.real.llama_server import llama_server
from tests.real.tiny_model import CONTEXT, write_tiny_llama
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import SIMULATED_GPUS

POOLS = ("real-a", "real-b")
MODEL = "tiny"


@dataclass(frozen=True)
class RealRun:
    server: ServeProcess
    #: llama-server URL per pool id.
    engines: dict[str, str]
    llama: RealLlama


@pytest.fixture(scope="session")
def real_llama() -> RealLlama:
    """The cached CPU llama-server (``make test-real`` builds it before pytest starts)."""
    try:
        return asyncio.run(ensure_llama_server())
    except ProvisionError as exc:
        message = f"the real llama.cpp build failed: {exc}"
        if os.environ.get("REQUIRE_REAL_LLAMA") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(f"{message} (set REQUIRE_REAL_LLAMA=1 to make this a failure)")


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return write_tiny_llama(cache_root() / "models" / "tiny-llama.gguf")


def real_config(engines: dict[str, str], artifacts: Path) -> dict[str, Any]:
    pools = [
        {
            "id": pool_id,
            "engine": "llamacpp",
            "model": MODEL,
            "ctx": CONTEXT,
            "devices": [index],
            "slots": 1,
            "determinism": "strict",
            "endpoint": url,
            "provisioning": {"mode": "external"},
            "backoff": {"initial_ms": 1, "max_ms": 10},
        }
        for index, (pool_id, url) in enumerate(engines.items())
    ]
    return {"gpus": SIMULATED_GPUS, "pools": pools, "server": {"artifacts_dir": str(artifacts)}}


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            states = [
                replica["state"]
                for pool_id in POOLS
                for replica in client.get(f"/v1/pools/{pool_id}/health").json()["metrics"][
                    "replicas"
                ]
            ]
            if states == ["ready"] * len(POOLS):
                return
            time.sleep(0.05)
    raise AssertionError(f"the real pools never became ready: {states}")


@pytest.fixture(scope="module")
def real_run(
    real_llama: RealLlama, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealRun]:
    """Two llama-server processes on the tiny model, one pool each, behind one server."""
    work = tmp_path_factory.mktemp("real")
    with (
        llama_server(real_llama.binary, tiny_model, work / "a.log", ctx=CONTEXT) as a,
        llama_server(real_llama.binary, tiny_model, work / "b.log", ctx=CONTEXT) as b,
    ):
        engines = dict(zip(POOLS, (a, b), strict=True))
        (work / "serve").mkdir()
        with serve_process(real_config(engines, work / "artifacts"), work / "serve") as server:
            wait_ready(server.url)
            yield RealRun(server, engines, real_llama)
