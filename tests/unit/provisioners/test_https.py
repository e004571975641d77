"""Pulls over HTTPS from a real TLS server: resume, retries, digests, disk, policy, races."""

from __future__ import annotations

import errno
import hashlib
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from llama_orch.catalog import CatalogStore, Lifecycle, parse_digest, parse_ref
from llama_orch.errors import (
    DigestMismatch,
    FetchFailed,
    InsufficientSpace,
    InvalidModelRef,
    NotFound,
    OutboundDenied,
)
from llama_orch.observability.metrics import Metrics
from llama_orch.provisioners.fetch.https import HttpsFetcher
from llama_orch.provisioners.fetch.resume import RateFloor
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.policy import OutboundPolicy
from tests.support.file_server import FileServerState, file_server
from tests.support.threaded_server import serve_in_thread
from tests.unit.provisioners.conftest import HttpsSite, https_provisioner, trickling_source

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class TestHttpsPull:
    def test_pull_registers_active_with_digest(self, store: CatalogStore, https_site: HttpsSite):
        """A pull over verified TLS lands under models/, Active, with the checked digest."""
        https_site.state.files["m.bin"] = PAYLOAD
        metrics = Metrics()
        prov = https_provisioner(store, https_site, metrics=metrics)
        entry = prov.ensure_present_str(f"{https_site.base}/m.bin", sha(PAYLOAD))
        assert (Lifecycle.ACTIVE, "pass", sha(PAYLOAD)) == (
            entry.lifecycle,
            entry.verification,
            entry.digest,
        )
        assert PAYLOAD == Path(entry.local_path).read_bytes()
        assert Path(entry.local_path).is_relative_to(store.models_dir)
        assert hashlib.sha256(PAYLOAD).hexdigest()[:16] == entry.source["etag"]
        assert b'result="pass"' in metrics.render()
        assert not any(store.staging_dir.iterdir())

    def test_second_pull_is_the_fast_path(self, store: CatalogStore, https_site: HttpsSite):
        """A ref already in the catalog is returned without contacting the server."""
        https_site.state.files["m.bin"] = PAYLOAD
        prov = https_provisioner(store, https_site)
        prov.ensure_present_str(f"{https_site.base}/m.bin")
        prov.ensure_present_str(f"{https_site.base}/m.bin")
        assert 1 == https_site.state.gets

    def test_unverified_pull_warns_under_permissive(self, store, https_site, narration):
        """Without a digest the pull is registered with a warning and counted as warn."""
        https_site.state.files["m.bin"] = PAYLOAD
        metrics = Metrics()
        entry = https_provisioner(store, https_site, metrics=metrics).ensure_present_str(
            f"{https_site.base}/m.bin"
        )
        assert "warn" == entry.verification
        assert b'result="warn"' in metrics.render()

    def test_untrusted_tls_is_refused(self, store: CatalogStore, https_site: HttpsSite):
        """A server whose certificate the fetcher does not trust fails the pull."""
        https_site.state.files["m.bin"] = PAYLOAD
        prov = ModelProvisioner(
            store,
            {"https": HttpsFetcher(backoff_s=0.0)},
            outbound=OutboundPolicy(True, (), ("https",)),
        )
        with pytest.raises(FetchFailed):
            prov.ensure_present_str(f"{https_site.base}/m.bin")
        assert [] == store.list()


class TestFaults:
    def test_digest_mismatch_registers_nothing(self, store, https_site):
        """Bytes that hash to something else fail the pull and leave no entry or partial."""
        https_site.state.files["m.bin"] = PAYLOAD
        prov = https_provisioner(store, https_site)
        with pytest.raises(DigestMismatch, match="expected sha256:00"):
            prov.ensure_present_str(f"{https_site.base}/m.bin", "sha256:" + "0" * 64)
        assert [] == store.list()
        assert not store.staging_for(f"{https_site.base}/m.bin").exists()

    def test_truncated_download_resumes_with_range(self, store, https_site):
        """A body cut short is resumed from the bytes on disk with a Range request."""
        https_site.state.files["m.bin"] = PAYLOAD
        https_site.state.faults = ["truncate"]
        entry = https_provisioner(store, https_site).ensure_present_str(
            f"{https_site.base}/m.bin", sha(PAYLOAD)
        )
        assert PAYLOAD == Path(entry.local_path).read_bytes()
        assert None is https_site.state.ranges[0]
        assert (https_site.state.ranges[1] or "").startswith("bytes=")

    def test_bytes_of_an_older_revision_are_not_resumed_onto(self, store, https_site):
        """A pull cut short, then the URL serves a new revision: resuming appended the new
        revision's tail to the old one's head and registered that mix. The resumed request
        now carries If-Range with the first try's ETag, so the server sends the new file whole.
        """
        url = f"{https_site.base}/m.bin"
        older = bytes(reversed(PAYLOAD))
        https_site.state.files["m.bin"] = older
        https_site.state.faults = ["truncate", "500", "500", "500"]
        with pytest.raises(FetchFailed):
            https_provisioner(store, https_site).ensure_present_str(url)
        assert 0 < (store.staging_for(url) / "m.bin.part").stat().st_size < len(older)
        https_site.state.files["m.bin"] = PAYLOAD
        entry = https_provisioner(store, https_site).ensure_present_str(url)
        assert PAYLOAD == Path(entry.local_path).read_bytes()
        assert sha(PAYLOAD) == entry.digest

    def test_server_error_then_success(self, store, https_site):
        """A 500 is retried and the pull succeeds."""
        https_site.state.files["m.bin"] = PAYLOAD
        https_site.state.faults = ["500", "500"]
        entry = https_provisioner(store, https_site).ensure_present_str(
            f"{https_site.base}/m.bin", sha(PAYLOAD)
        )
        assert "pass" == entry.verification
        assert 3 == https_site.state.gets

    def test_persistent_errors_fail_typed(self, store, https_site):
        """A server that keeps failing gives FetchFailed with a hint, not a crash."""
        https_site.state.files["m.bin"] = PAYLOAD
        https_site.state.faults = ["500"] * 10
        with pytest.raises(FetchFailed, match="after 4 tries"):
            https_provisioner(store, https_site).ensure_present_str(f"{https_site.base}/m.bin")

    def test_disk_space_preflight(self, store, https_site):
        """A download larger than the free space is refused before writing, with numbers."""
        https_site.state.files["m.bin"] = PAYLOAD
        prov = https_provisioner(store, https_site, free_bytes=lambda _path: 1024 * 1024)
        with pytest.raises(InsufficientSpace, match="MiB free"):
            prov.ensure_present_str(f"{https_site.base}/m.bin")
        assert [] == store.list()

    def test_disk_full_while_writing(self, store, https_site):
        """ENOSPC from the filesystem becomes InsufficientSpace; nothing is registered."""
        https_site.state.files["m.bin"] = PAYLOAD

        class FullDisk:
            def __init__(self, path: Path, mode: str) -> None:
                self.handle: BinaryIO = path.open(mode)  # type: ignore[assignment]
                self.written = 0

            def write(self, data: bytes) -> int:
                if self.written + len(data) > 100_000:
                    raise OSError(errno.ENOSPC, "No space left on device")
                self.written += len(data)
                return self.handle.write(data)

            def __getattr__(self, name: str) -> object:
                return getattr(self.handle, name)

            def __enter__(self) -> FullDisk:
                return self

            def __exit__(self, *exc: object) -> None:
                self.handle.close()

        prov = ModelProvisioner(
            store,
            {"https": HttpsFetcher(verify=https_site.context, opener=FullDisk)},  # type: ignore[arg-type]
            outbound=OutboundPolicy(True, (), ("https",)),
        )
        with pytest.raises(InsufficientSpace, match="full"):
            prov.ensure_present_str(f"{https_site.base}/m.bin")
        assert [] == store.list()

    def test_kill_9_mid_pull_leaves_nothing_and_resumes(self, store, https_site):
        """A pull killed with SIGKILL leaves no entry; the next pull resumes the bytes."""
        https_site.state.files["m.bin"] = PAYLOAD
        https_site.state.faults = ["hold"]
        url = f"{https_site.base}/m.bin"
        script = (
            "import ssl,sys\n"
            "from pathlib import Path\n"
            "from llama_orch.catalog import CatalogStore\n"
            "from llama_orch.provisioners.fetch.https import HttpsFetcher\n"
            "from llama_orch.provisioners.models import ModelProvisioner\n"
            "from llama_orch.provisioners.policy import OutboundPolicy\n"
            "ctx=ssl.create_default_context(cafile=sys.argv[3])\n"
            "p=ModelProvisioner(CatalogStore(Path(sys.argv[1])),{'https':HttpsFetcher(verify=ctx)},"
            "outbound=OutboundPolicy(True,(),('https',)))\n"
            "p.ensure_present_str(sys.argv[2])\n"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(store.root), url, str(https_site.ca_file)]
        )
        part = store.staging_for(url) / "m.bin.part"
        try:
            assert https_site.state.holding.wait(30)
            # The child writes the first chunk after the server sent it; poll, bounded.
            for _ in range(3000):
                if part.exists() and part.stat().st_size > 0:
                    break
                https_site.state.release.wait(0.01)
        finally:
            child.kill()
            child.wait(30)
        https_site.state.release.set()
        assert [] == store.list()
        assert part.exists()
        assert not store.model_dir(url).exists()
        entry = https_provisioner(store, https_site).ensure_present_str(url, sha(PAYLOAD))
        assert PAYLOAD == Path(entry.local_path).read_bytes()
        assert (https_site.state.ranges[-1] or "").startswith("bytes=")

    def test_concurrent_pulls_download_once(self, store, https_site):
        """Two threads pulling one ref download it once and get the same entry."""
        https_site.state.files["m.bin"] = PAYLOAD
        https_site.state.faults = ["hold"]
        prov = https_provisioner(store, https_site)
        url = f"{https_site.base}/m.bin"
        results: list[str] = []

        def pull() -> None:
            results.append(prov.ensure_present_str(url).local_path)

        threads = [threading.Thread(target=pull) for _ in range(2)]
        for thread in threads:
            thread.start()
        assert https_site.state.holding.wait(30)
        https_site.state.release.set()
        for thread in threads:
            thread.join(30)
        assert 2 == len(results) and results[0] == results[1]
        assert 1 == https_site.state.gets


class TestPolicy:
    def test_outbound_forbidden_names_key(self, store, https_site):
        """With outbound off, the error names the host and network_policy.allow_outbound."""
        prov = https_provisioner(store, https_site, outbound=OutboundPolicy())
        with pytest.raises(OutboundDenied, match=r"127\.0\.0\.1") as info:
            prov.ensure_present_str(f"{https_site.base}/m.bin")
        assert "network_policy.allow_outbound" in info.value.message

    def test_host_not_allowed(self, store, https_site):
        """A host outside allowed_hosts is refused, naming the key to change."""
        prov = https_provisioner(
            store, https_site, outbound=OutboundPolicy(True, ("*.example.org",), ("https",))
        )
        with pytest.raises(OutboundDenied, match="allowed_hosts"):
            prov.ensure_present_str(f"{https_site.base}/m.bin")


def test_digest_helper_parses() -> None:
    """The test helper agrees with the parser."""
    assert parse_digest(sha(b"x")).value == hashlib.sha256(b"x").hexdigest()
    assert parse_ref("https://a.io/x")


def _redirector(targets: dict[str, str]) -> Starlette:
    """Answers ``/r/<name>`` with a 302 to ``targets[name]`` (a hostile or careless mirror)."""

    async def redirect(request: Request) -> Response:
        return RedirectResponse(targets[request.path_params["name"]], 302)

    return Starlette(routes=[Route("/r/{name}", redirect, methods=["GET"])])


class TestRedirects:
    """Every hop of a redirect goes through the outbound policy, not just the first URL."""

    def test_redirect_to_a_host_outside_allowed_hosts_is_refused(self, store, tmp_path):
        state = FileServerState(files={"m.bin": PAYLOAD})
        with serve_in_thread(file_server(state)) as files_port:
            target = f"http://localhost:{files_port}/files/m.bin"
            with serve_in_thread(_redirector({"m.bin": target})) as port:
                prov = ModelProvisioner(
                    store,
                    {"http": HttpsFetcher(backoff_s=0.0)},
                    outbound=OutboundPolicy(True, ("127.0.0.1",), ("http",)),
                )
                with pytest.raises(OutboundDenied, match=r"'localhost'.*allowed_hosts"):
                    prov.ensure_present_str(f"http://127.0.0.1:{port}/r/m.bin")
        assert 0 == state.gets
        assert [] == store.list()

    def test_redirect_to_a_scheme_not_allowed_is_refused(self, store, tmp_path):
        with serve_in_thread(_redirector({"m.bin": "file:///etc/hostname"})) as port:
            prov = ModelProvisioner(
                store,
                {"http": HttpsFetcher(backoff_s=0.0)},
                outbound=OutboundPolicy(True, (), ("http", "file")),
            )
            with pytest.raises(OutboundDenied, match="file:"):
                prov.ensure_present_str(f"http://127.0.0.1:{port}/r/m.bin")
        assert [] == store.list()

    def test_a_redirect_loop_is_a_typed_failure(self, store):
        targets: dict[str, str] = {}
        with serve_in_thread(_redirector(targets)) as port:
            url = f"http://127.0.0.1:{port}/r/m.bin"
            targets["m.bin"] = url
            prov = ModelProvisioner(
                store,
                {"http": HttpsFetcher(backoff_s=0.0)},
                outbound=OutboundPolicy(True, (), ("http",)),
            )
            with pytest.raises(FetchFailed, match="redirects"):
                prov.ensure_present_str(url)
        assert [] == store.list()


def test_a_token_in_the_query_stays_out_of_errors(store, https_site, captured_logs):
    """A presigned URL's query is a credential: the id drops it, and so must every error."""
    url = f"{https_site.base}/gone.bin?X-Amz-Signature=s3cr3t-token"
    with pytest.raises(NotFound) as info:
        https_provisioner(store, https_site).ensure_present_str(url)
    assert "s3cr3t" not in str(info.value.envelope())
    assert "s3cr3t" not in str(captured_logs)


def _wrong_range_server(data: bytes, calls: list[str | None]) -> Starlette:
    """Cuts the first answer short, then answers a resume with 206 but the file from byte 0
    (a broken cache or mirror that labels every answer partial); later whole GETs succeed."""

    async def serve(request: Request) -> Response:
        header = request.headers.get("range")
        calls.append(header)
        etag = {"ETag": '"v1"', "Content-Length": str(len(data))}
        if header is None and len(calls) > 1:
            return Response(data, 200, etag)
        if header is None:

            async def cut() -> AsyncIterator[bytes]:
                yield data[: len(data) // 2]
                raise ConnectionResetError("simulated drop mid-body")

            return StreamingResponse(cut(), 200, etag)
        etag["Content-Range"] = f"bytes 0-{len(data) - 1}/{len(data)}"
        return Response(data, 206, etag)

    return Starlette(routes=[Route("/m.bin", serve, methods=["GET"])])


def test_a_resume_answered_from_another_offset_is_not_appended(store):
    """A 206 whose Content-Range does not start where the kept bytes end is not glued on."""
    calls: list[str | None] = []
    with serve_in_thread(_wrong_range_server(PAYLOAD, calls)) as port:
        prov = ModelProvisioner(
            store,
            {"http": HttpsFetcher(backoff_s=0.0)},
            outbound=OutboundPolicy(True, (), ("http",)),
        )
        entry = prov.ensure_present_str(f"http://127.0.0.1:{port}/m.bin")
    assert (calls[1] or "").startswith("bytes=")
    assert (sha(PAYLOAD), None) == (entry.digest, calls[2])


def test_a_file_name_longer_than_the_disk_allows_is_refused(store, https_site):
    """A name past NAME_MAX failed the pull with a bare 'File name too long' OSError."""
    name = "a" * 250 + ".gguf"
    https_site.state.files[name] = PAYLOAD
    with pytest.raises(InvalidModelRef, match="at most 240"):
        https_provisioner(store, https_site).ensure_present_str(f"{https_site.base}/{name}")
    assert [] == store.list()
    assert 0 == https_site.state.gets


async def _endless(request: Request) -> Response:
    """A body with no Content-Length that never ends (a hostile or broken source)."""

    async def forever() -> AsyncIterator[bytes]:
        chunk = b"\0" * (1024 * 1024)
        while not await request.is_disconnected():  # ends only so the test server can stop
            yield chunk

    return StreamingResponse(forever(), 200)


def test_a_body_of_unknown_length_keeps_the_disk_reserve(store, tmp_path):
    """Without a Content-Length the preflight never ran, so an endless body filled the disk
    to the last byte; the reserve is now kept as the bytes arrive."""
    reserve = 1024 * 1024
    budget = reserve + 24 * 1024 * 1024

    def free(_path: Path) -> int:
        used = sum(f.stat().st_size for f in store.staging_dir.rglob("*") if f.is_file())
        return budget - used

    app = Starlette(routes=[Route("/m.bin", _endless, methods=["GET"])])
    with serve_in_thread(app) as port:
        prov = ModelProvisioner(
            store,
            {"http": HttpsFetcher(backoff_s=0.0)},
            outbound=OutboundPolicy(True, (), ("http",)),
            free_bytes=free,
            reserve_bytes=reserve,
        )
        with pytest.raises(InsufficientSpace, match="MiB"):
            prov.ensure_present_str(f"http://127.0.0.1:{port}/m.bin")
    assert 0 < budget - free(tmp_path) and free(tmp_path) >= reserve
    assert [] == store.list()


def test_a_trickling_source_fails_the_pull_naming_its_rate(store, tmp_path, tls_ca):
    """A source sending a byte now and then held the pull and its lock forever (a read
    timeout only catches a full stall); each try now ends when a window passes with fewer
    bytes than the floor, is retried, and the pull fails typed, naming the rate."""
    cert = tls_ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    requests: list[str | None] = []
    finished: list[bool] = []
    fetcher = HttpsFetcher(
        verify=context, backoff_s=0.0, floor=RateFloor(min_bytes=1000, window_s=0.5)
    )
    app = trickling_source("/m.bin", requests, finished)
    with serve_in_thread(app, certfile=certfile, keyfile=keyfile) as port:
        prov = ModelProvisioner(
            store, {"https": fetcher}, outbound=OutboundPolicy(True, (), ("https",))
        )
        with pytest.raises(FetchFailed, match=r"after 4 tries: .* \(\d+ B/s\), below the floor"):
            prov.ensure_present_str(f"https://127.0.0.1:{port}/m.bin")
    assert (4, []) == (len(requests), finished)  # each try was given up, not read to its end
    assert [] == store.list()


def test_a_source_answering_every_get_with_a_stray_range_fails_typed(store):
    """A source that answers even a whole-file GET with a 206 from another offset (or with no
    Content-Range) was asked again and again for byte 0 until Python's recursion limit broke
    the pull with an untyped RecursionError; it is a FetchFailed naming the answer."""
    calls: list[str | None] = []

    async def serve(request: Request) -> Response:
        calls.append(request.headers.get("range"))
        headers = {"ETag": '"v1"', "Content-Range": f"bytes 100-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"}
        return Response(PAYLOAD[100:], 206, headers)

    app = Starlette(routes=[Route("/m.bin", serve, methods=["GET"])])
    with serve_in_thread(app) as port:
        prov = ModelProvisioner(
            store,
            {"http": HttpsFetcher(backoff_s=0.0)},
            outbound=OutboundPolicy(True, (), ("http",)),
        )
        with pytest.raises(FetchFailed, match="206"):
            prov.ensure_present_str(f"http://127.0.0.1:{port}/m.bin")
    assert len(calls) <= 2
    assert [] == store.list()
