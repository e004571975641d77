"""Config of engine pools: endpoints, upstream routes and API keys from the environment."""

from __future__ import annotations

from typing import Any

import pytest

from llama_orch.config import Config, load_settings
from llama_orch.errors import ConfigError

GPUS = {"simulated": [{"index": 0, "name": "sim", "vram_mb": 1024}]}


def config(**pool: Any) -> Config:
    base: dict[str, Any] = {
        "id": "p",
        "engine": "openai",
        "model": "m",
        "endpoint": "https://api.example",
        "provisioning": {"mode": "external"},
    }
    base.update(pool)
    return Config.model_validate({"gpus": GPUS, "pools": [base]})


class TestEnginePoolConfig:
    def test_api_key_is_read_from_the_named_variable(self) -> None:
        """load_settings resolves api_key_env once; the key is kept out of the repr."""
        settings = load_settings({"UPSTREAM": "sk-abc"}, config=config(api_key_env="UPSTREAM"))
        assert {"p": "sk-abc"} == dict(settings.upstream_api_keys)
        assert "sk-abc" not in repr(settings)

    def test_unset_key_variable_fails_with_its_name(self) -> None:
        """A named but unset variable stops start-up and says which one."""
        with pytest.raises(ConfigError) as info:
            load_settings({}, config=config(api_key_env="UPSTREAM"))
        assert ["pools.0.api_key_env"] == [issue.path for issue in info.value.issues]
        assert "UPSTREAM" in str(info.value)

    @pytest.mark.parametrize(
        ("pool", "fragment"),
        [
            ({"endpoint": "ftp://engine"}, "http:// or https://"),
            ({"engine": "tgi", "upstream_api": "chat"}, "upstream_api applies"),
            ({"api_key_env": "not a name"}, "api_key_env names an environment variable"),
            ({"http": {"retries": 11}}, "retries"),
            ({"http": {"read_timeout_ms": 0}}, "read_timeout_ms"),
        ],
    )
    def test_invalid_values_are_rejected(self, pool: dict[str, Any], fragment: str) -> None:
        """Impossible engine settings fail validation with a message naming the problem."""
        with pytest.raises(ValueError) as info:
            config(**pool)
        assert fragment in str(info.value)
