"""Pulls with the real huggingface_hub against a local, protocol-faithful hub."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import Response

from llama_orch.catalog import CatalogStore
from llama_orch.errors import (
    DigestMismatch,
    FetchFailed,
    InvalidModelRef,
    NotFound,
    OutboundDenied,
    UntrustedArtifact,
)
from llama_orch.provisioners.fetch.hf import HfFetcher
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.policy import TrustPolicy
from tests.support.fake_hf_hub import HubRepo, HubState, fake_hf_hub
from tests.support.gguf_files import tiny_llama_gguf
from tests.support.threaded_server import serve_in_thread
from tests.unit.provisioners.conftest import OPEN


@pytest.fixture
def hub() -> Iterator[tuple[str, HubState]]:
    state = HubState()
    with serve_in_thread(fake_hf_hub(state)) as port:
        yield f"http://127.0.0.1:{port}", state


def provisioner(store: CatalogStore, endpoint: str, **kw: object) -> ModelProvisioner:
    token = kw.pop("token", None)
    fetcher = HfFetcher(endpoint=endpoint, token=token)  # type: ignore[arg-type]
    return ModelProvisioner(store, {"hf": fetcher}, outbound=OPEN, **kw)  # type: ignore[arg-type]


class TestHfPull:
    def test_single_gguf_with_lfs_sha_and_metadata(self, tmp_path, store, hub, narration):
        """One LFS file is fetched, its sha256 checked, its GGUF header recorded."""
        endpoint, state = hub
        data = tiny_llama_gguf(tmp_path / "m.gguf").read_bytes()
        state.repos["org/tiny"] = HubRepo(
            files={"m.gguf": data, "README.md": b"hi"}, lfs={"m.gguf"}
        )
        prov = provisioner(store, endpoint)
        entry = prov.ensure_present_str("hf:org/tiny/m.gguf")
        assert len(data) == prov.progress["hf:org/tiny/m.gguf"].bytes_done
        assert narration.events("fetch-progress")  # one chunk: the last milestone passed
        assert "hf:org/tiny/m.gguf" == entry.id
        assert "pass" == entry.verification
        assert data == Path(entry.local_path).read_bytes()
        assert state.repos["org/tiny"].sha == entry.source["commit"]
        assert entry.gguf is not None and "llama" == entry.gguf.architecture
        assert 1 == state.downloads

    def test_whole_repo_is_a_directory_entry(self, store, hub):
        """A repo ref stages every file (in parallel) into one directory entry."""
        endpoint, state = hub
        files = {"config.json": b"{}", "w/model.safetensors": b"w" * 5000, "tok.json": b"t"}
        state.repos["org/full"] = HubRepo(files=files, lfs={"w/model.safetensors"})
        entry = provisioner(store, endpoint).ensure_present_str("hf:org/full")
        root = Path(entry.local_path)
        assert sorted(files) == sorted(f.path for f in entry.files)
        assert b"w" * 5000 == (root / "w" / "model.safetensors").read_bytes()
        assert not (root / ".cache").exists()
        assert "pass" == entry.verification

    def test_tampered_lfs_sha_is_a_mismatch(self, store, hub):
        """When the hub's advertised sha256 disagrees with the bytes, nothing is registered."""
        endpoint, state = hub
        state.repos["org/bad"] = HubRepo(
            files={"m.gguf": b"abc"}, lfs={"m.gguf"}, lie_sha256={"m.gguf": "f" * 64}
        )
        with pytest.raises(DigestMismatch):
            provisioner(store, endpoint).ensure_present_str("hf:org/bad/m.gguf")
        assert [] == store.list()

    def test_missing_repo_and_file_are_not_found(self, store, hub):
        """Unknown repos and files are NOT_FOUND with the name in the message."""
        endpoint, state = hub
        state.repos["org/r"] = HubRepo(files={"a.gguf": b"a"})
        prov = provisioner(store, endpoint)
        with pytest.raises(NotFound, match="org/none"):
            prov.ensure_present_str("hf:org/none/a.gguf")
        with pytest.raises(NotFound, match=r"b\.gguf"):
            prov.ensure_present_str("hf:org/r/b.gguf")

    def test_remote_traversal_names_are_refused(self, store, hub):
        """A repo listing a file named with '..' is refused before anything is written."""
        endpoint, state = hub
        state.repos["org/evil"] = HubRepo(files={"../../escape.gguf": b"x"})
        with pytest.raises(InvalidModelRef):
            provisioner(store, endpoint).ensure_present_str("hf:org/evil")
        assert not (store.root.parent / "escape.gguf").exists()

    def test_token_reaches_hub_and_is_never_logged(self, store, hub, captured_logs):
        """HF_TOKEN is sent as a bearer token to the hub and appears in no log event."""
        endpoint, state = hub
        secret = "hf_" + "s3cr3t" * 6
        state.repos["org/private"] = HubRepo(files={"m.gguf": b"p"}, private_token=secret)
        entry = provisioner(store, endpoint, token=secret).ensure_present_str(
            "hf:org/private/m.gguf"
        )
        assert f"Bearer {secret}" in state.authorizations
        assert secret not in repr(captured_logs)
        assert secret not in (store.root / "models.json").read_text()
        assert entry.id == "hf:org/private/m.gguf"

    def test_strict_trust_refuses_unverified(self, store, hub):
        """Under strict, a plain git file with no sha256 anywhere is UNTRUSTED_ARTIFACT."""
        endpoint, state = hub
        state.repos["org/plain"] = HubRepo(files={"m.gguf": b"plain"})
        prov = provisioner(store, endpoint, trust=TrustPolicy(mode="strict"))
        with pytest.raises(UntrustedArtifact) as info:
            prov.ensure_present_str("hf:org/plain/m.gguf")
        assert "UNTRUSTED_ARTIFACT" == info.value.envelope()["code"]
        digest = "sha256:" + hashlib.sha256(b"plain").hexdigest()
        assert "pass" == prov.ensure_present_str("hf:org/plain/m.gguf", digest).verification

    def test_allowed_registries_enforced(self, store, hub):
        """A hub host outside allowed_registries is refused as untrusted."""
        endpoint, state = hub
        state.repos["org/r"] = HubRepo(files={"a.gguf": b"a"})
        prov = provisioner(store, endpoint, trust=TrustPolicy(allowed_registries=("hf.co",)))
        with pytest.raises(UntrustedArtifact, match="allowed_registries"):
            prov.ensure_present_str("hf:org/r/a.gguf")


class TestHostileHub:
    def test_an_unreachable_hub_is_a_typed_failure(self, store):
        """A hub that cannot be reached (down, wrong HF_ENDPOINT) is FETCH_FAILED, naming it."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(FetchFailed, match=re.escape(endpoint)):
            provisioner(store, endpoint).ensure_present_str("hf:org/r/m.gguf")
        assert [] == store.list()

    def test_names_that_collide_are_refused(self, store, hub):
        """A listing with a file and a folder of one name cannot be laid out on disk."""
        endpoint, state = hub
        state.repos["org/nest"] = HubRepo(files={"a": b"x", "a/b": b"y"})
        with pytest.raises(InvalidModelRef, match="collide"):
            provisioner(store, endpoint).ensure_present_str("hf:org/nest")
        assert [] == store.list()

    def test_a_repo_of_git_files_only_is_refused(self, store, hub):
        """A repo holding nothing but .gitattributes has no model to register."""
        endpoint, state = hub
        state.repos["org/bare"] = HubRepo(files={".gitattributes": b"*.gguf filter=lfs"})
        with pytest.raises(InvalidModelRef, match="no model file"):
            provisioner(store, endpoint).ensure_present_str("hf:org/bare")
        assert [] == store.list()


def _hub_with(app: Any, answer: Callable[[dict[str, Any]], Response | None]) -> Any:
    """``app`` behind a front that may answer a request itself (a redirect, a failure)."""

    async def front(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reply = answer(scope) if scope["type"] == "http" else None
        await (reply or app)(scope, receive, send)

    return front


class TestHubRedirects:
    def pull_through_cdn(
        self, store: CatalogStore, allowed: tuple[str, ...], ref: str = "hf:org/r/m.gguf"
    ) -> Path:
        """The hub sends each file's GET to ``localhost`` (its CDN); info stays on 127.0.0.1."""
        state = HubState(repos={"org/r": HubRepo(files={"m.gguf": b"gguf"}, lfs={"m.gguf"})})
        with serve_in_thread(fake_hf_hub(state)) as cdn_port:

            def to_cdn(scope: dict[str, Any]) -> Response | None:
                if scope["method"] != "GET" or "/resolve/" not in scope["path"]:
                    return None
                return Response(
                    b"", 302, {"Location": f"http://localhost:{cdn_port}{scope['path']}"}
                )

            with serve_in_thread(_hub_with(fake_hf_hub(state), to_cdn)) as port:
                policy = dataclasses.replace(OPEN, allowed_hosts=allowed)
                fetcher = HfFetcher(endpoint=f"http://127.0.0.1:{port}")
                prov = ModelProvisioner(store, {"hf": fetcher}, outbound=policy)
                return Path(prov.ensure_present_str(ref).local_path)

    @pytest.mark.parametrize("ref", ["hf:org/r/m.gguf", "hf:org/r"])
    def test_a_redirect_off_the_allowed_hosts_is_refused(self, store, ref):
        """A hub's redirect to a host outside allowed_hosts is OUTBOUND_DENIED, naming it; a
        whole repo's files, fetched in parallel threads, are held to it too."""
        with pytest.raises(OutboundDenied, match="'localhost' is not in network_policy"):
            self.pull_through_cdn(store, ("127.0.0.1",), ref)
        assert [] == store.list()

    def test_an_allowed_redirect_is_followed(self, store):
        """The same redirect to a listed host downloads the file from there."""
        assert b"gguf" == self.pull_through_cdn(store, ("127.0.0.1", "localhost")).read_bytes()


class TestHubFailingMidPull:
    def test_a_failing_hub_is_fetch_failed_and_the_pull_resumes(self, store):
        """A hub erroring after some files is FETCH_FAILED (retriable, "pull again"), not
        NOT_FOUND; nothing is registered, and once the hub is back the pull completes. (520,
        a CDN's "unknown error", because the library retries 500s for half a minute first.)"""
        files = {"a.gguf": b"a" * 100, "b.json": b"{}"}
        state = HubState(repos={"org/flaky": HubRepo(files=files, lfs={"a.gguf"})})
        broken = [True]

        def fail_b(scope: dict[str, Any]) -> Response | None:
            failing = broken[0] and scope["path"].endswith("/b.json")
            return Response(b"upstream error", 520) if failing else None

        with serve_in_thread(_hub_with(fake_hf_hub(state), fail_b)) as port:
            prov = provisioner(store, f"http://127.0.0.1:{port}")
            with pytest.raises(FetchFailed, match="pull again") as info:
                prov.ensure_present_str("hf:org/flaky")
            envelope = info.value.envelope()
            assert ("INTERNAL", True) == (envelope["code"], envelope["retriable"])
            assert "HTTP 520" in envelope["message"]
            assert [] == store.list()
            files_dir = store.staging_for("hf:org/flaky") / "files"
            kept = [p for p in files_dir.rglob("*") if p.is_file() and ".cache" not in p.parts]
            assert all(files[p.name] == p.read_bytes() for p in kept)  # whole files only
            broken[0] = False
            entry = prov.ensure_present_str("hf:org/flaky")
        assert sorted(files) == sorted(f.path for f in entry.files)
