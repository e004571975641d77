"""The catalog on the control plane of a real server: pull, list, show, verify, state, delete."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from starlette.applications import Starlette
from starlette.responses import RedirectResponse
from starlette.routing import Route

from llama_orch.catalog.store import CatalogStore
from llama_orch.cli.serve import SHUTDOWN_DEADLINE_S
from llama_orch.provisioners.fetch.base import validator_path
from llama_orch.provisioners.progress import KEEP_FINISHED
from tests.support.file_server import FileServerState, file_server
from tests.support.gguf_files import tiny_llama_gguf
from tests.support.https_site import HttpsSite, serve_https_site
from tests.support.serve_process import serve_process
from tests.support.server import RunningServer, config_of, mock_pool, running_server
from tests.support.threaded_server import serve_in_thread


@pytest.fixture
def site(tmp_path: Path) -> Iterator[HttpsSite]:
    with serve_https_site(tmp_path, trustme.CA()) as served:
        yield served


def catalog_config(tmp_path: Path, site: HttpsSite | None = None) -> Any:
    top: dict[str, Any] = {"catalog": {"root": str(tmp_path / "catalog")}}
    if site is not None:
        top["catalog"]["trust_policy"] = {"ca_roots": [str(site.ca_file)]}
        top["network_policy"] = {
            "allow_outbound": True,
            "allowed_hosts": ["127.0.0.1"],
            "allowed_schemes": ["file", "https"],
        }
    return config_of(**top)


async def wait_active(srv: RunningServer, model_id: str) -> dict[str, Any]:
    for _ in range(1000):
        body: dict[str, Any] = (await srv.client.get(f"/v1/catalog/models/{model_id}")).json()
        if body["state"] != "Pulling" and body.get("pull", {}).get("state") != "running":
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"{model_id} never finished pulling")


async def wait_settled(srv: RunningServer, model_id: str) -> dict[str, Any] | None:
    """The model once its pull ended (None: the server no longer remembers the pull)."""
    for _ in range(1000):
        response = await srv.client.get(f"/v1/catalog/models/{model_id}")
        if response.status_code == 404:
            return None
        body: dict[str, Any] = response.json()
        if body.get("pull", {}).get("state") != "running":
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"{model_id} never finished pulling")


class TestCatalogApi:
    async def test_register_list_page_etag(self, tmp_path: Path) -> None:
        """Local files register with 201; the list pages by cursor and honours If-None-Match."""
        for name in ("a.gguf", "b.gguf", "c.gguf"):
            tiny_llama_gguf(tmp_path / name)
        async with running_server(catalog_config(tmp_path)) as srv:
            for name in ("a.gguf", "b.gguf", "c.gguf"):
                response = await srv.client.post(
                    "/v1/catalog/models", json={"ref": f"file:{tmp_path / name}"}
                )
                assert 201 == response.status_code
            assert "llama" == response.json()["gguf"]["architecture"]
            first = await srv.client.get("/v1/catalog/models", params={"limit": 2})
            page = first.json()
            assert 2 == len(page["models"]) and page["next_cursor"]
            rest = await srv.client.get(
                "/v1/catalog/models", params={"limit": 2, "cursor": page["next_cursor"]}
            )
            assert [f"file:{tmp_path / 'c.gguf'}"] == [m["id"] for m in rest.json()["models"]]
            assert "next_cursor" not in rest.json()
            again = await srv.client.get(
                "/v1/catalog/models",
                params={"limit": 2},
                headers={"If-None-Match": first.headers["etag"]},
            )
            assert 304 == again.status_code

    async def test_remote_pull_progress_then_lifecycle(self, tmp_path: Path, site) -> None:
        """An https pull answers 202, shows progress, then verify, retire and delete work."""
        payload = b"weights" * 100_000
        site.state.files["m.bin"] = payload
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        async with running_server(catalog_config(tmp_path, site)) as srv:
            url = f"{site.base}/m.bin"
            response = await srv.client.post(
                "/v1/catalog/models", json={"ref": url, "digest": digest}
            )
            assert 202 == response.status_code
            model_id = response.json()["id"]
            assert response.headers["location"].endswith(model_id)
            body = await wait_active(srv, model_id)
            assert ("Active", "pass", digest) == (
                body["state"],
                body["verification"],
                body["digest"],
            )
            assert len(payload) == body["pull"]["bytes_done"]
            verify = await srv.client.post(f"/v1/catalog/models/{model_id}/verify")
            assert 202 == verify.status_code
            state = await srv.client.post(
                f"/v1/catalog/models/{model_id}/state", json={"state": "Retired"}
            )
            assert 202 == state.status_code
            shown = (await srv.client.get(f"/v1/catalog/models/{model_id}")).json()
            assert "Retired" == shown["state"]
            metrics = (await srv.client.get("/metrics")).text
            assert f'model_state{{model_id="{model_id}",state="Retired"}} 1.0' in metrics
            assert 204 == (await srv.client.delete(f"/v1/catalog/models/{model_id}")).status_code
            assert 404 == (await srv.client.get(f"/v1/catalog/models/{model_id}")).status_code

    async def test_a_whole_leftover_download_is_started_over(self, tmp_path: Path, site) -> None:
        """A try that ended after its last byte but before its rename leaves a complete .part:
        resuming asks for a range past the end, which the server refuses with 416. That used
        to fail every pull of the URL for good; the download now starts over."""
        payload = b"weights" * 1000
        site.state.files["m.bin"] = payload
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        url = f"{site.base}/m.bin"
        async with httpx.AsyncClient(verify=site.context) as plain:
            revision = (await plain.get(url)).headers["etag"]
        stage = CatalogStore(tmp_path / "catalog").staging_for(url)
        stage.mkdir(parents=True)
        (stage / "m.bin.part").write_bytes(payload)
        validator_path(stage / "m.bin").write_text(revision)
        async with running_server(catalog_config(tmp_path, site)) as srv:
            pulled = await srv.client.post(
                "/v1/catalog/models", json={"ref": url, "digest": digest}
            )
            assert 202 == pulled.status_code
            body = await wait_active(srv, url)
        assert ("Active", "pass") == (body["state"], body.get("verification")), body
        assert [None, f"bytes={len(payload)}-", None] == site.state.ranges

    async def test_a_second_pull_with_another_digest_is_a_conflict(
        self, tmp_path: Path, site: HttpsSite
    ) -> None:
        """While a pull without a digest runs, a pull of the same ref asking for a digest is a
        409 (joining the running pull would skip the check it asked for); a plain second pull
        joins it; once the pull ended, the digest is checked against the catalog's copy."""
        payload = b"weights" * 100_000
        site.state.files["m.bin"] = payload
        site.state.faults.append("hold")
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        async with running_server(catalog_config(tmp_path, site)) as srv:
            ref = {"ref": f"{site.base}/m.bin"}
            first = await srv.client.post("/v1/catalog/models", json=ref)
            assert 202 == first.status_code
            await asyncio.to_thread(site.state.holding.wait, 30)
            joined = await srv.client.post("/v1/catalog/models", json=ref)
            assert 202 == joined.status_code
            checked = await srv.client.post("/v1/catalog/models", json={**ref, "digest": digest})
            assert (409, "CONFLICT") == (checked.status_code, checked.json()["code"])
            assert "without a digest" in checked.json()["message"]
            site.state.release.set()
            body = await wait_active(srv, first.json()["id"])
            assert "Active" == body["state"]
            again = await srv.client.post("/v1/catalog/models", json={**ref, "digest": digest})
            assert 201 == again.status_code

    async def test_deleting_a_model_being_pulled_is_a_conflict(
        self, tmp_path: Path, site: HttpsSite
    ) -> None:
        """DELETE while the model's pull runs is a 409 CONFLICT envelope naming the pull and
        saying to wait for it; once the pull ended, the delete goes through."""
        site.state.files["m.bin"] = b"weights" * 100_000
        site.state.faults.append("hold")
        async with running_server(catalog_config(tmp_path, site)) as srv:
            pulled = await srv.client.post("/v1/catalog/models", json={"ref": f"{site.base}/m.bin"})
            model_id = pulled.json()["id"]
            await asyncio.to_thread(site.state.holding.wait, 30)
            refused = await srv.client.delete(
                f"/v1/catalog/models/{model_id}", headers={"X-Correlation-Id": "del-pull-1"}
            )
            body = refused.json()
            assert (409, "CONFLICT") == (refused.status_code, body["code"])
            assert "del-pull-1" == refused.headers["x-correlation-id"]
            assert f"model {model_id} is being pulled" in body["message"]
            assert f"wait for it to end (GET /v1/catalog/models/{model_id}" in body["message"]
            site.state.release.set()
            assert "Active" == (await wait_active(srv, model_id))["state"]
            assert 204 == (await srv.client.delete(f"/v1/catalog/models/{model_id}")).status_code

    async def test_finished_pulls_are_remembered_only_up_to_a_bound(
        self, tmp_path: Path, site: HttpsSite
    ) -> None:
        """Every distinct ref posted used to stay in the server's pull table for good, failed
        ones included, so a long uptime of posts grew the server. Now the latest
        KEEP_FINISHED finished pulls are kept: the newest failure still shows its error."""
        count = KEEP_FINISHED + 12
        async with running_server(catalog_config(tmp_path, site)) as srv:
            ids = []
            for n in range(count):
                posted = await srv.client.post(
                    "/v1/catalog/models", json={"ref": f"{site.base}/missing-{n}.bin"}
                )
                assert 202 == posted.status_code, posted.text
                ids.append(posted.json()["id"])
            shown = [await wait_settled(srv, model_id) for model_id in ids]
            last = await srv.client.post(
                "/v1/catalog/models", json={"ref": f"{site.base}/missing-last.bin"}
            )
            newest = await wait_settled(srv, last.json()["id"])
            assert newest is not None and "failed" == newest["pull"]["state"]
            assert "answered 404" in newest["pull"]["error"]["message"]
            assert KEEP_FINISHED == len(srv.deps.models.progress)
            forgotten = [
                model_id
                for model_id in ids
                if (await srv.client.get(f"/v1/catalog/models/{model_id}")).status_code == 404
            ]
            assert count + 1 - KEEP_FINISHED == len(forgotten)
            assert all(body is None or body["pull"]["state"] == "failed" for body in shown)
        # Nor does a failed pull leave an empty staging folder behind for each ref.
        assert [] == list((tmp_path / "catalog" / ".staging").iterdir())

    async def test_refusals_are_typed(self, tmp_path: Path) -> None:
        """Bad refs, closed outbound policy, bad states and unknown ids get typed envelopes."""
        async with running_server(catalog_config(tmp_path)) as srv:
            bad = await srv.client.post("/v1/catalog/models", json={"ref": "ftp://x/y"})
            assert (400, "INVALID_PARAMS") == (bad.status_code, bad.json()["code"])
            assert "hf:org/repo" in bad.json()["hint"]
            closed = await srv.client.post(
                "/v1/catalog/models", json={"ref": "https://example.org/m.gguf"}
            )
            assert 400 == closed.status_code
            assert "network_policy.allow_outbound" in closed.json()["message"]
            missing = await srv.client.post("/v1/catalog/models/hf:o/r/state", json={"state": "x"})
            assert 404 == missing.status_code
            assert 404 == (await srv.client.delete("/v1/catalog/models/hf:o/r")).status_code
            no_body = await srv.client.post("/v1/catalog/models", json={})
            assert 400 == no_body.status_code
            # A body far past any pull request is refused, not read into memory whole.
            huge = await srv.client.post(
                "/v1/catalog/models", json={"ref": "hf:o/r/m.gguf", "pad": "x" * 200_000}
            )
            assert (413, "INVALID_PARAMS") == (huge.status_code, huge.json()["code"])
            assert "exceeds 65536 bytes" in huge.json()["message"]

    async def test_a_redirect_past_allowed_hosts_fails_the_pull_typed(self, tmp_path: Path) -> None:
        """A source on an allowed host that redirects elsewhere: the pull fails with the
        policy's envelope, the other host is never asked, and nothing is registered."""
        files = FileServerState(files={"m.bin": b"weights" * 1000})
        with serve_in_thread(file_server(files)) as files_port:
            target = f"http://localhost:{files_port}/files/m.bin"
            redirect = Starlette(
                routes=[Route("/m.bin", lambda _r: RedirectResponse(target, 302), methods=["GET"])]
            )
            with serve_in_thread(redirect) as port:
                top: dict[str, Any] = {
                    "catalog": {"root": str(tmp_path / "catalog")},
                    "network_policy": {
                        "allow_outbound": True,
                        "allowed_hosts": ["127.0.0.1"],
                        "allowed_schemes": ["file", "http"],
                    },
                }
                async with running_server(config_of(**top)) as srv:
                    url = f"http://127.0.0.1:{port}/m.bin"
                    response = await srv.client.post("/v1/catalog/models", json={"ref": url})
                    assert 202 == response.status_code
                    body = await wait_settled(srv, response.json()["id"])
                    listed = (await srv.client.get("/v1/catalog/models")).json()["models"]
        assert body is not None
        error = body["pull"]["error"]
        assert "INVALID_PARAMS" == error["code"]
        assert "'localhost'" in error["message"] and "allowed_hosts" in error["hint"]
        assert (0, []) == (files.gets, listed)

    async def test_a_directory_without_a_file_is_not_a_model(self, tmp_path: Path) -> None:
        """A directory holding no regular file (empty, or only a FIFO and a link to itself)
        used to register as an Active model of 4096 bytes with the digest of nothing."""
        empty = tmp_path / "empty"
        empty.mkdir()
        odd = tmp_path / "odd"
        odd.mkdir()
        os.mkfifo(odd / "pipe")
        (odd / "loop").symlink_to(odd)
        async with running_server(catalog_config(tmp_path)) as srv:
            answers = [
                await srv.client.post("/v1/catalog/models", json={"ref": f"file:{path}"})
                for path in (empty, odd)
            ]
            listed = (await srv.client.get("/v1/catalog/models")).json()["models"]
        for path, answer in zip((empty, odd), answers, strict=True):
            assert (400, "INVALID_PARAMS") == (answer.status_code, answer.json()["code"])
            assert f"{path} holds no regular file" in answer.json()["message"]
        assert [] == listed

    async def test_an_empty_file_is_not_a_model(self, tmp_path: Path) -> None:
        """An empty file, or a kernel file that stats as empty (/proc/self/environ, which holds
        the server's secrets), used to register as an Active model of 0 bytes."""
        empty = tmp_path / "empty.gguf"
        empty.touch()
        async with running_server(catalog_config(tmp_path)) as srv:
            answers = [
                await srv.client.post("/v1/catalog/models", json={"ref": f"file:{path}"})
                for path in (empty, "/proc/self/environ")
            ]
            listed = (await srv.client.get("/v1/catalog/models")).json()["models"]
        for path, answer in zip((empty, "/proc/self/environ"), answers, strict=True):
            assert (400, "INVALID_PARAMS") == (answer.status_code, answer.json()["code"])
            assert f"{path} is empty" in answer.json()["message"]
        assert [] == listed

    async def test_a_model_file_that_cannot_be_read_is_a_typed_refusal(
        self, tmp_path: Path
    ) -> None:
        """A model directory holding a file the server cannot read (here one whose reads fail
        with EIO; for a server not run as root, a file without read permission) used to
        answer its registration with a bare 500."""
        folder = tmp_path / "model"
        folder.mkdir()
        tiny_llama_gguf(folder / "m.gguf")
        (folder / "unreadable.bin").symlink_to("/proc/self/mem")
        async with running_server(catalog_config(tmp_path)) as srv:
            answer = await srv.client.post("/v1/catalog/models", json={"ref": f"file:{folder}"})
            listed = (await srv.client.get("/v1/catalog/models")).json()["models"]
        assert (400, "INVALID_PARAMS") == (answer.status_code, answer.json()["code"])
        assert f"{folder / 'unreadable.bin'} cannot be read" in answer.json()["message"]
        assert [] == listed

    async def test_catalog_routes_need_the_token(self, tmp_path: Path) -> None:
        """With AUTH_TOKEN set, the catalog routes refuse requests without it."""
        token = "catalog-test-token-" + "x" * 24
        async with running_server(catalog_config(tmp_path), {"AUTH_TOKEN": token}) as srv:
            refused = await srv.client.get("/v1/catalog/models")
            assert (401, "MISSING_TOKEN") == (refused.status_code, refused.json()["code"])
            allowed = await srv.client.get(
                "/v1/catalog/models", headers={"Authorization": f"Bearer {token}"}
            )
            assert 200 == allowed.status_code


class TestStopWhileHashing:
    async def test_sigterm_cuts_a_local_registration_short(self, tmp_path: Path) -> None:
        """SIGTERM while a large local model is hashed for POST /v1/catalog/models: the
        request gets a retriable 503, the server exits within its shutdown deadline (it used
        to hash on past it, then die with a traceback and a 500)."""
        big = tiny_llama_gguf(tmp_path / "big.gguf")
        with big.open("r+b") as handle:
            handle.truncate(64 * 1024**3)  # sparse: hashing it takes minutes, storing it nothing
        config = {"catalog": {"root": str(tmp_path / "catalog")}, "pools": [mock_pool()]}
        with serve_process(config, tmp_path) as served:
            async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
                post = asyncio.create_task(
                    client.post("/v1/catalog/models", json={"ref": f"file:{big}"})
                )
                for _ in range(1000):
                    shown = await client.get(f"/v1/catalog/models/file:{big}")
                    if shown.status_code == 200:
                        break
                    await asyncio.sleep(0.02)
                assert "running" == shown.json()["pull"]["state"]
                served.process.send_signal(signal.SIGTERM)
                response = await post
            assert (503, True) == (response.status_code, response.json()["retriable"])
            try:
                served.process.wait(timeout=SHUTDOWN_DEADLINE_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"llorch serve still ran {SHUTDOWN_DEADLINE_S} s after SIGTERM")
            log = served.log_path.read_text()
        assert "Traceback" not in log


class TestDamagedIndex:
    def test_a_torn_index_at_start_is_set_aside_and_nothing_else_is_lost(
        self, tmp_path: Path
    ) -> None:
        """A models.json cut short on disk (it used to answer every catalog request with a
        bare 500): the server starts, keeps the damaged file beside it, says so in its log,
        serves an empty model index, and leaves engines.json and the model files alone."""
        root = tmp_path / "catalog"
        (root / "models" / "kept").mkdir(parents=True)
        (root / "models" / "kept" / "m.gguf").write_bytes(b"bytes of a model")
        torn = b'{"version": 1, "models": [{"id": "hf:org/repo", "ref": "hf:or'
        (root / "models.json").write_bytes(torn)
        # The engine provisioner's index (FileEngineIndex) shares the catalog root.
        engines = b'{"version": 1, "engines": {"llamacpp:b1": {"id": "llamacpp:b1"}}}'
        (root / "engines.json").write_bytes(engines)
        model = tiny_llama_gguf(tmp_path / "a.gguf")
        config = {"catalog": {"root": str(root)}, "pools": [mock_pool()]}
        with serve_process(config, tmp_path) as served, httpx.Client(base_url=served.url) as c:
            listed = c.get("/v1/catalog/models")
            assert (200, []) == (listed.status_code, listed.json()["models"])
            added = c.post("/v1/catalog/models", json={"ref": f"file:{model}"})
            assert 201 == added.status_code
            listed = c.get("/v1/catalog/models")
            assert [f"file:{model}"] == [m["id"] for m in listed.json()["models"]]
            log = served.log_path.read_text()
        kept = list(root.glob("models.json.corrupt-*"))
        assert 1 == len(kept) and torn == kept[0].read_bytes()
        assert f"{root / 'models.json'} cannot be read" in log and kept[0].name in log
        assert engines == (root / "engines.json").read_bytes()
        assert b"bytes of a model" == (root / "models" / "kept" / "m.gguf").read_bytes()
        assert "Traceback" not in log

    def test_models_registered_before_the_damage_are_kept(self, tmp_path: Path) -> None:
        """models.json cut short between two runs: the server started with an empty index,
        so every model registered before (hashes, GGUF headers, the files under models/ it
        owns) was forgotten. The copy of the index written beside it brings them back."""
        root = tmp_path / "catalog"
        models = [tiny_llama_gguf(tmp_path / f"{name}.gguf") for name in ("a", "b")]
        config = {"catalog": {"root": str(root)}, "pools": [mock_pool()]}
        with serve_process(config, tmp_path) as served, httpx.Client(base_url=served.url) as c:
            for model in models:
                assert (
                    201 == c.post("/v1/catalog/models", json={"ref": f"file:{model}"}).status_code
                )
        index = root / "models.json"
        index.write_bytes(index.read_bytes()[:40])
        with serve_process(config, tmp_path) as served, httpx.Client(base_url=served.url) as c:
            listed = c.get("/v1/catalog/models").json()["models"]
            log = served.log_path.read_text()
        assert [f"file:{m}" for m in models] == [m["id"] for m in listed]
        assert all(m["digest"].startswith("sha256:") for m in listed)
        assert 1 == len(list(root.glob("models.json.corrupt-*")))
        assert "models.json.bak" in log and "Traceback" not in log

    def test_files_of_an_interrupted_delete_are_removed_at_start(self, tmp_path: Path) -> None:
        """A delete moves the model's files to .trash, writes the index, then removes them; a
        server killed in between used to leave those bytes (gigabytes) there for good."""
        root = tmp_path / "catalog"
        (root / ".trash" / "m-1234abcd").mkdir(parents=True)
        (root / ".trash" / "m-1234abcd" / "m.gguf").write_bytes(b"weights of a deleted model")
        config = {"catalog": {"root": str(root)}, "pools": [mock_pool()]}
        with serve_process(config, tmp_path) as served:
            log = served.log_path.read_text()
        assert [] == list((root / ".trash").iterdir())
        assert "Removes 1 leftover of an interrupted model delete" in log

    def test_an_index_damaged_while_serving_is_a_typed_error(self, tmp_path: Path) -> None:
        """Garbage written over models.json while the server runs: catalog requests name the
        file and what to do, instead of the generic "unexpected error" 500."""
        root = tmp_path / "catalog"
        config = {"catalog": {"root": str(root)}, "pools": [mock_pool()]}
        with serve_process(config, tmp_path) as served, httpx.Client(base_url=served.url) as c:
            (root / "models.json").write_bytes(b"\x00\x00garbage")
            listed = c.get("/v1/catalog/models")
            body = listed.json()
            assert (500, "INTERNAL") == (listed.status_code, body["code"])
            assert f"{root / 'models.json'} cannot be read" in body["message"]
            assert "restart the server" in body["hint"]
            (root / "models.json").write_bytes(b'{"version": 1, "models": [{"id": 3}]}')
            shown = c.get("/v1/catalog/models/hf:org/repo")
            assert "cannot be read" in shown.json()["message"]


class TestFileBeingWritten:
    async def test_a_file_still_being_written_is_not_registered(self, tmp_path: Path) -> None:
        """A file that grows while it is hashed: the digest would belong to bytes that never
        existed whole, so the registration is refused (it used to succeed, recording a digest
        the finished file fails); once the file is complete it registers."""
        growing = tiny_llama_gguf(tmp_path / "growing.gguf")
        with growing.open("r+b") as handle:
            handle.truncate(256 * 1024**2)  # sparse: long enough to hash that writes overlap
        done = threading.Event()

        def write_on() -> None:
            # Paced, so the file keeps changing for as long as the hash runs, however slow
            # a loaded machine makes it, without growing by gigabytes meanwhile.
            with growing.open("ab") as handle:
                while not done.wait(0.002):
                    handle.write(b"\0" * 4096)
                    handle.flush()

        writer = threading.Thread(target=write_on)
        async with running_server(catalog_config(tmp_path)) as srv:
            writer.start()
            try:
                ref = {"ref": f"file:{growing}"}
                refused = await srv.client.post("/v1/catalog/models", json=ref)
            finally:
                done.set()
                writer.join()
            listed = (await srv.client.get("/v1/catalog/models")).json()["models"]
            complete = await srv.client.post("/v1/catalog/models", json=ref)
        body = refused.json()
        assert (409, "CONFLICT") == (refused.status_code, body["code"])
        assert f"{growing} changed while it was hashed" in body["message"]
        assert [] == listed
        assert 201 == complete.status_code
