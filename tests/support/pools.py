"""Pool configs for provisioned engines (fixture factories named for what they build)."""

from __future__ import annotations

from typing import Any

from llama_orch.config import PoolConfig


def llamacpp_pool(model: str, *, pool_id: str = "p0", **provisioning: Any) -> PoolConfig:
    prov = {"mode": "binary", **provisioning}
    return PoolConfig.model_validate(
        {"id": pool_id, "engine": "llamacpp", "model": model, "devices": [0], "provisioning": prov}
    )
