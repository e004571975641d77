"""``catalog.local_roots`` on a real ``llorch serve``: which local files clients may name.

Without the key a ``file:`` ref may name any file the server's user can read, and the answer
carries its sha256 and size; with it, refs outside the listed folders are refused before any
file is opened, however the path gets out (``..``, a symlink).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from llama_orch.config import parse_config_text
from llama_orch.errors import ConfigError
from tests.support.gguf_files import tiny_llama_gguf
from tests.support.launched import launched_setup, wait_health
from tests.support.serve_process import serve_process
from tests.support.server import mock_pool, running_server, yaml_config


def _config(tmp_path: Path, pools: list[dict[str, Any]], **catalog: Any) -> dict[str, Any]:
    return {
        "pools": pools,
        "catalog": {"root": str(tmp_path / "catalog"), **catalog},
        "server": {"artifacts_dir": str(tmp_path / "artifacts")},
    }


def _refused(response: httpx.Response) -> str:
    body = response.json()
    assert (400, "INVALID_PARAMS") == (response.status_code, body["code"]), body
    assert "sha256" not in response.text
    message: str = body["message"]
    return message


class TestLocalRoots:
    def test_refs_outside_the_roots_are_refused_however_they_get_out(self, tmp_path: Path) -> None:
        """In a root: registered (a relative root is the config file's folder's). Outside, by a
        plain path, by '..', by a symlink inside a root (or in a model directory there), or not
        there at all: a 400 naming the key, and no digest."""
        models = tmp_path / "models"
        models.mkdir()
        tiny_llama_gguf(models / "in.gguf")
        secret = tmp_path / "secret.txt"
        secret.write_text("password=hunter2\n")
        (models / "escape.gguf").symlink_to(secret)
        leaky = models / "leaky"
        leaky.mkdir()
        tiny_llama_gguf(leaky / "m.gguf")
        (leaky / "notes.txt").symlink_to(secret)
        config = _config(tmp_path, [mock_pool()], local_roots=["models"])
        with (
            serve_process(config, tmp_path) as served,
            httpx.Client(base_url=served.url, timeout=30) as client,
        ):
            inside = client.post("/v1/catalog/models", json={"ref": f"file:{models / 'in.gguf'}"})
            assert 201 == inside.status_code, inside.text
            relative = client.post("/v1/catalog/models", json={"ref": "models/in.gguf"})
            assert 201 == relative.status_code, relative.text
            escapes = [
                f"file:{secret}",
                f"file:{models}/../secret.txt",
                "models/../secret.txt",
                f"file:{models / 'escape.gguf'}",
                f"file:{tmp_path / 'absent.gguf'}",
                "file:/etc/passwd",
            ]
            for ref in escapes:
                message = _refused(client.post("/v1/catalog/models", json={"ref": ref}))
                assert "outside catalog.local_roots (models)" in message, (ref, message)
            linked = client.post("/v1/catalog/models", json={"ref": f"file:{leaky}"})
            assert "holds notes.txt, a link to a place outside catalog.local_roots" in _refused(
                linked
            )
            listed = client.get("/v1/catalog/models").json()["models"]
            assert [f"file:{models / 'in.gguf'}"] == [m["id"] for m in listed]

    def test_unset_any_readable_file_registers_and_an_empty_list_allows_none(
        self, tmp_path: Path
    ) -> None:
        """Without the key the old behaviour stays; ``local_roots: []`` refuses every local
        ref; a pool's configured model is the operator's and is registered either way."""
        outside = tmp_path / "elsewhere" / "m.gguf"
        outside.parent.mkdir()
        tiny_llama_gguf(outside)
        pool = mock_pool(model=f"file:{outside}")
        for roots, expected in ((None, 201), ([], 400)):
            extra: dict[str, Any] = {} if roots is None else {"local_roots": roots}
            workdir = tmp_path / f"run-{expected}"
            workdir.mkdir()
            config = _config(workdir, [pool], **extra)
            with (
                serve_process(config, workdir) as served,
                httpx.Client(base_url=served.url, timeout=30) as client,
            ):
                second = tmp_path / "elsewhere" / "second.gguf"
                tiny_llama_gguf(second)
                posted = client.post("/v1/catalog/models", json={"ref": f"file:{second}"})
                assert expected == posted.status_code, posted.text
                if expected == 400:
                    assert "outside catalog.local_roots (none)" in _refused(posted)
                shown = _wait_registered(client, f"file:{outside}")
                assert "Active" == shown["state"]


class TestReloadRoots:
    async def test_a_reload_to_a_model_outside_the_roots_is_refused(self, tmp_path: Path) -> None:
        """A reload's model is the caller's, so it is bounded as a pull's is; the launched
        pool's own configured model, outside the roots, is the operator's and serves."""
        roots = tmp_path / "models"
        roots.mkdir()
        secret = tmp_path / "secret.gguf"
        secret.write_text("not for clients\n")
        (roots / "link.gguf").symlink_to(secret)
        (tmp_path / "launched").mkdir()
        with launched_setup(tmp_path / "launched") as setup:
            config = setup.config()
            catalog = config.catalog.model_copy(update={"local_roots": [str(roots)]})
            async with running_server(config.model_copy(update={"catalog": catalog})) as srv:
                await wait_health(srv, "lp", lambda h: h["ready"])
                for ref in (str(secret), str(roots / "link.gguf"), f"{roots}/../secret.gguf"):
                    answer = await srv.client.post(
                        "/v1/pools/lp/reload", json={"new_model_ref": ref}
                    )
                    assert "outside catalog.local_roots" in _refused(answer), ref
                health = (await srv.client.get("/v1/pools/lp/health")).json()
                assert health["ready"] and health["last_operation"] is None, health
                listed = (await srv.client.get("/v1/catalog/models")).json()["models"]
                assert [f"file:{setup.model}"] == [m["id"] for m in listed]


def _wait_registered(client: httpx.Client, model_id: str) -> dict[str, Any]:
    """The pool's model once the server registered it at start (in the background)."""
    for _ in range(500):
        response = client.get(f"/v1/catalog/models/{model_id}")
        body: dict[str, Any] = response.json()
        if response.status_code == 200 and body.get("state") == "Active":
            return body
        time.sleep(0.02)
    raise AssertionError(f"{model_id} was never registered: {body}")


class TestLocalRootsConfig:
    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            ("'/srv/models'", "list"),
            ("['']", "is not a folder"),
            ("[' ']", "is not a folder"),
            ("[1]", "string"),
        ],
    )
    def test_bad_values_are_refused_with_the_key(self, value: str, problem: str) -> None:
        text = f"{yaml_config({'pools': [mock_pool()]})}catalog:\n  local_roots: {value}\n"
        with pytest.raises(ConfigError) as caught:
            parse_config_text(text)
        assert "catalog.local_roots" in str(caught.value)
        assert problem in str(caught.value)

    def test_the_key_is_in_the_published_schema(self) -> None:
        schema = (Path(__file__).parents[2] / "contracts" / "config.schema.json").read_text()
        assert '"local_roots"' in schema
