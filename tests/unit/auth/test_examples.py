"""The three auth examples (OC-CONFIG-6031) load with the environment they document."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from llama_orch.config import load_settings
from llama_orch.errors import ConfigError
from llama_orch.observability.redaction import Redactor

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TOKEN = {"AUTH_TOKEN": "example-token-0123456789"}
_SECRET_KEY = re.compile(r"(?i)(token|secret|password|api_key)$")


def secret_keys(node: Any, path: str = "") -> list[str]:
    """Paths of keys that would hold a secret inline."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if _SECRET_KEY.search(str(key)) and isinstance(value, str):
                found.append(where)
            found += secret_keys(value, where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += secret_keys(value, f"{path}.{index}")
    return found


class TestAuthExamples:
    def test_loopback_dev(self) -> None:
        """Loopback dev serves without a token and lets loopback skip one once it is set."""
        path = EXAMPLES / "auth-loopback-dev.yaml"
        bare, with_token = load_settings({}, path), load_settings(TOKEN, path)
        assert (True, None, True) == (bare.loopback_bind, bare.auth_token, with_token.auth_optional)

    def test_lan_needs_the_token_from_the_environment(self) -> None:
        """The LAN example refuses to start without AUTH_TOKEN and starts with it."""
        path = EXAMPLES / "auth-lan-token.yaml"
        with pytest.raises(ConfigError, match="NON_LOOPBACK_WITHOUT_TOKEN"):
            load_settings({}, path)
        lan = load_settings(TOKEN, path)
        assert (False, False) == (lan.loopback_bind, lan.auth_optional)

    def test_reverse_proxy_trusts_forwarded_headers_and_requires_the_token(self) -> None:
        """The proxy example binds loopback, trusts the proxy and exempts nobody."""
        proxy = load_settings(TOKEN, EXAMPLES / "auth-reverse-proxy.yaml")
        assert (True, True, False) == (
            proxy.loopback_bind,
            proxy.trust_proxy_auth,
            proxy.auth_optional,
        )


class TestNoSecretsInExamples:
    @pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
    def test_no_inline_secret(self, path: Path) -> None:
        """No example holds a token or key: secrets come from the environment only."""
        text = path.read_text(encoding="utf-8")
        assert [] == secret_keys(yaml.safe_load(text))
        assert text == Redactor().text(text)
