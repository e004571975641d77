"""The auth keys of the environment and the file (OC-CONFIG-6030..6033), resolved into Settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_orch.config import Settings, load_settings
from llama_orch.errors import ConfigError
from tests.support.server import config_of, yaml_config


def settings(environ: dict[str, str], **server: object) -> Settings:
    return load_settings(environ, config=config_of(server=server) if server else config_of())


def refusal(environ: dict[str, str], **server: object) -> str:
    with pytest.raises(ConfigError) as info:
        settings(environ, **server)
    return str(info.value)


class TestBind:
    def test_loopback_default(self) -> None:
        """The default bind is 127.0.0.1:8080 (§17.1), served without a token."""
        resolved = settings({})
        assert ("127.0.0.1", 8080, None) == (resolved.host, resolved.port, resolved.auth_token)

    def test_bind_addr_wins_over_alias_and_file(self) -> None:
        """BIND_ADDR beats ORCHD_ADDR, which beats server.bind_addr."""
        both = settings({"BIND_ADDR": "127.0.0.2:9001", "ORCHD_ADDR": "127.0.0.3:9002"})
        alias = settings({"ORCHD_ADDR": "127.0.0.3:9002"}, bind_addr="127.0.0.4:9003")
        from_file = settings({}, bind_addr="127.0.0.4:9003")
        assert [("127.0.0.2", 9001), ("127.0.0.3", 9002), ("127.0.0.4", 9003)] == [
            (s.host, s.port) for s in (both, alias, from_file)
        ]

    @pytest.mark.parametrize("bind", ["0.0.0.0:8080", "192.168.1.5:8080", "[::]:8080"])
    def test_non_loopback_without_token_is_refused(self, bind: str) -> None:
        """A non-loopback bind without a token fails, naming 40301 and the fix (AUTH-1002)."""
        message = refusal({"BIND_ADDR": bind})
        assert "NON_LOOPBACK_WITHOUT_TOKEN (40301)" in message
        assert "AUTH_TOKEN" in message and "llorch token new" in message

    def test_non_loopback_with_token_is_accepted(self) -> None:
        """With a token the same bind is fine (OC-CONFIG-6032)."""
        assert not settings({"BIND_ADDR": "0.0.0.0:8080", "AUTH_TOKEN": "t"}).loopback_bind


class TestToken:
    def test_env_token_wins_over_files(self, tmp_path: Path) -> None:
        """AUTH_TOKEN beats AUTH_TOKEN_FILE and server.auth_token_file."""
        file = tmp_path / "t"
        file.write_text("from-file\n")
        env = {"AUTH_TOKEN": "from-env", "AUTH_TOKEN_FILE": str(file)}
        assert "from-env" == settings(env, auth_token_file=str(file)).auth_token

    def test_token_file_is_stripped(self, tmp_path: Path) -> None:
        """AUTH_TOKEN_FILE is read and its trailing newline dropped."""
        file = tmp_path / "t"
        file.write_text("  tok-123\n")
        assert "tok-123" == settings({"AUTH_TOKEN_FILE": str(file)}).auth_token

    def test_file_key_resolves_against_the_config_file(self, tmp_path: Path) -> None:
        """A relative server.auth_token_file is found next to the config file."""
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "token").write_text("tok-rel\n")
        raw = config_of(server={"auth_token_file": "secrets/token"}).model_dump(mode="json")
        path = tmp_path / "llorch.yaml"
        path.write_text(yaml_config(raw))
        assert "tok-rel" == load_settings({}, path).auth_token

    @pytest.mark.parametrize("content", [None, ""])
    def test_unreadable_or_empty_file_names_the_key(
        self, tmp_path: Path, content: str | None
    ) -> None:
        """A missing or empty token file fails start-up naming the key, never silently open."""
        file = tmp_path / "t"
        if content is not None:
            file.write_text(content)
        assert "AUTH_TOKEN_FILE" in refusal({"AUTH_TOKEN_FILE": str(file)})

    def test_token_is_not_in_repr(self) -> None:
        """Settings never print the token."""
        assert "s3cret" not in repr(settings({"AUTH_TOKEN": "s3cret"}))


class TestFlags:
    def test_env_overrides_file(self) -> None:
        """AUTH_OPTIONAL and TRUST_PROXY_AUTH from the environment beat the file."""
        resolved = settings(
            {"AUTH_OPTIONAL": "false", "TRUST_PROXY_AUTH": "1"},
            auth_optional=True,
            trust_proxy_auth=False,
        )
        assert (False, True) == (resolved.auth_optional, resolved.trust_proxy_auth)

    def test_defaults_are_strict(self) -> None:
        """Both flags default to false (OC-CONFIG-6030)."""
        resolved = settings({})
        assert (False, False) == (resolved.auth_optional, resolved.trust_proxy_auth)

    def test_bad_bool_names_the_key(self) -> None:
        """A value that is not a boolean fails naming the variable."""
        assert "AUTH_OPTIONAL" in refusal({"AUTH_OPTIONAL": "maybe"})
