"""S3 pulls with boto3 against moto's server, OCI pulls with oras against a real registry."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.catalog import CatalogStore
from llama_orch.errors import (
    DigestMismatch,
    FetchFailed,
    InsufficientSpace,
    InvalidModelRef,
    NotFound,
    OutboundDenied,
)
from llama_orch.provisioners.fetch.base import validator_path
from llama_orch.provisioners.fetch.oci import OciFetcher
from llama_orch.provisioners.fetch.resume import RateFloor
from llama_orch.provisioners.fetch.s3 import S3Fetcher
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.policy import OutboundPolicy
from tests.support.threaded_server import serve_in_thread
from tests.unit.provisioners.conftest import OPEN, trickling_source

PAYLOAD = b"model-bytes" * 50_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str) -> None:
    """Poll until ``url`` answers (bounded); servers started as threads or processes."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


class TestS3:
    def test_pull_records_etag_and_version(self, store: CatalogStore, s3_endpoint: str) -> None:
        """An object in a versioned bucket is pulled with its ETag and version recorded."""
        client = s3_client(s3_endpoint)
        client.create_bucket(Bucket="models")
        client.put_bucket_versioning(Bucket="models", VersioningConfiguration={"Status": "Enabled"})
        client.put_object(Bucket="models", Key="q4/m.gguf", Body=PAYLOAD)
        prov = ModelProvisioner(
            store, {"s3": S3Fetcher(endpoint_url=s3_endpoint, client=client)}, outbound=OPEN
        )
        digest = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
        entry = prov.ensure_present_str("s3://models/q4/m.gguf", digest)
        assert PAYLOAD == Path(entry.local_path).read_bytes()
        assert entry.source["version_id"] and entry.source["etag"]
        assert "pass" == entry.verification

    def test_checksum_published_by_the_store_is_checked(self, store, s3_endpoint) -> None:
        """A SHA256 checksum stored with the object verifies the pull without a given digest."""
        client = s3_client(s3_endpoint)
        client.create_bucket(Bucket="sums")
        client.put_object(Bucket="sums", Key="m.bin", Body=PAYLOAD, ChecksumAlgorithm="SHA256")
        prov = ModelProvisioner(
            store, {"s3": S3Fetcher(endpoint_url=s3_endpoint, client=client)}, outbound=OPEN
        )
        assert "pass" == prov.ensure_present_str("s3://sums/m.bin").verification

    def test_a_leftover_download_longer_than_the_object_is_started_over(
        self, store: CatalogStore, s3_endpoint: str
    ) -> None:
        """Bytes kept from an earlier try of a longer object used to fail every try ("got N
        of M bytes") and so every pull of the key; the download now starts over."""
        client = s3_client(s3_endpoint)
        client.create_bucket(Bucket="shrunk")
        client.put_object(Bucket="shrunk", Key="m.bin", Body=PAYLOAD)
        stage = store.staging_for("s3://shrunk/m.bin")
        stage.mkdir(parents=True)
        (stage / "m.bin.part").write_bytes(b"x" * (len(PAYLOAD) + 10))
        prov = ModelProvisioner(
            store, {"s3": S3Fetcher(endpoint_url=s3_endpoint, client=client)}, outbound=OPEN
        )
        digest = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
        entry = prov.ensure_present_str("s3://shrunk/m.bin", digest)
        assert PAYLOAD == Path(entry.local_path).read_bytes()

    def test_bytes_of_an_overwritten_object_are_not_resumed_onto(
        self, store: CatalogStore, s3_endpoint: str
    ) -> None:
        """Bytes kept from a try at an object since overwritten (an unversioned bucket) were
        resumed onto, registering the old head with the new tail. They are resumed only when
        the object's ETag is the one their try recorded."""
        client = s3_client(s3_endpoint)
        client.create_bucket(Bucket="overwritten")
        client.put_object(Bucket="overwritten", Key="m.bin", Body=PAYLOAD)
        stage = store.staging_for("s3://overwritten/m.bin")
        stage.mkdir(parents=True)
        (stage / "m.bin.part").write_bytes(bytes(reversed(PAYLOAD))[:1000])
        validator_path(stage / "m.bin").write_text("the-etag-of-the-older-object")
        prov = ModelProvisioner(
            store, {"s3": S3Fetcher(endpoint_url=s3_endpoint, client=client)}, outbound=OPEN
        )
        entry = prov.ensure_present_str("s3://overwritten/m.bin")
        assert PAYLOAD == Path(entry.local_path).read_bytes()

    def test_missing_object_and_mismatch(self, store, s3_endpoint) -> None:
        """A missing key is NOT_FOUND; a wrong digest registers nothing."""
        client = s3_client(s3_endpoint)
        client.create_bucket(Bucket="other")
        client.put_object(Bucket="other", Key="m.bin", Body=b"abc")
        prov = ModelProvisioner(
            store, {"s3": S3Fetcher(endpoint_url=s3_endpoint, client=client)}, outbound=OPEN
        )
        with pytest.raises(NotFound):
            prov.ensure_present_str("s3://other/none.bin")
        with pytest.raises(DigestMismatch):
            prov.ensure_present_str("s3://other/m.bin", "sha256:" + "1" * 64)
        assert [] == store.list()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry is not installed; `make test` installs it")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def oci_provisioner(
    store: CatalogStore, registry: str, outbound: OutboundPolicy = OPEN
) -> ModelProvisioner:
    return ModelProvisioner(
        store, {"oci": OciFetcher(insecure_registries=(registry,))}, outbound=outbound
    )


def oras_push(registry: str, target: str, files: list[Path]) -> None:
    import oras.client

    client = oras.client.OrasClient(hostname=registry, insecure=True)
    client.push(
        target=f"{registry}/{target}", files=[str(f) for f in files], disable_path_validation=True
    )


class TestOci:
    def test_pull_single_file_artifact(self, tmp_path, store, registry) -> None:
        """An artifact pushed with oras is pulled, its layer digest checked and recorded."""
        (tmp_path / "m.gguf").write_bytes(PAYLOAD)
        oras_push(registry, "models/tiny:q4", [tmp_path / "m.gguf"])
        prov = oci_provisioner(store, registry)
        entry = prov.ensure_present_str(f"oci://{registry}/models/tiny:q4")
        assert PAYLOAD == Path(entry.local_path).read_bytes()
        assert "pass" == entry.verification
        assert entry.source["manifest_digest"].startswith("sha256:")

    def test_missing_tag_is_not_found(self, store, registry) -> None:
        """A tag the registry does not have is NOT_FOUND."""
        prov = oci_provisioner(store, registry)
        with pytest.raises(NotFound):
            prov.ensure_present_str(f"oci://{registry}/models/none:v1")


def _tarball(path: Path, members: dict[str, bytes], link: tuple[str, str] | None = None) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link is not None:
            info = tarfile.TarInfo(link[0])
            info.type = tarfile.SYMTYPE
            info.linkname = link[1]
            tar.addfile(info)
    return path


DIR_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


class TestOciDirectories:
    def test_directory_artifact_unpacks(self, tmp_path, store, registry) -> None:
        """A directory pushed with oras is unpacked into a directory entry."""
        model_dir = tmp_path / "repo"
        model_dir.mkdir()
        (model_dir / "config.json").write_bytes(b"{}")
        (model_dir / "model.safetensors").write_bytes(PAYLOAD)
        oras_push(registry, "models/dir:v1", [model_dir])
        prov = oci_provisioner(store, registry)
        entry = prov.ensure_present_str(f"oci://{registry}/models/dir:v1")
        assert {"repo/config.json", "repo/model.safetensors"} == {f.path for f in entry.files}

    @pytest.mark.parametrize(
        ("members", "link"),
        [({"../escape.txt": b"x"}, None), ({"ok.txt": b"x"}, ("evil", "/etc/passwd"))],
    )
    def test_archives_that_escape_are_refused(
        self, tmp_path, store, registry, members, link
    ) -> None:
        """Archive members with '..' or links pointing outside are refused; nothing lands."""
        evil = _tarball(tmp_path / "evil.tar.gz", members, link)
        tag = f"evil{len(link or ())}"
        oras_push(registry, f"models/{tag}:v1", [Path(f"{evil}:{DIR_TYPE}")])
        prov = oci_provisioner(store, registry)
        with pytest.raises(InvalidModelRef, match="unsafe archive"):
            prov.ensure_present_str(f"oci://{registry}/models/{tag}:v1")
        assert [] == store.list()
        assert not (store.root / "escape.txt").exists()


MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def put_blob(registry: str, repo: str, data: bytes, algo: str = "sha256") -> str:
    """Upload ``data`` with the registry API (POST then PUT); returns its digest."""
    digest = f"{algo}:{hashlib.new(algo, data).hexdigest()}"
    started = httpx.post(f"http://{registry}/v2/{repo}/blobs/uploads/")
    location = str(started.url.join(started.headers["location"]))
    separator = "&" if "?" in location else "?"
    httpx.put(f"{location}{separator}digest={digest}", content=data).raise_for_status()
    return digest


def put_manifest(registry: str, repo: str, tag: str, manifest: dict[str, Any]) -> bytes:
    raw = json.dumps(manifest).encode()
    httpx.put(
        f"http://{registry}/v2/{repo}/manifests/{tag}",
        content=raw,
        headers={"Content-Type": str(manifest["mediaType"])},
    ).raise_for_status()
    return raw


def file_layer(registry: str, repo: str, data: bytes, title: str, algo: str = "sha256") -> Any:
    return {
        "mediaType": "application/octet-stream",
        "digest": put_blob(registry, repo, data, algo),
        "size": len(data),
        "annotations": {"org.opencontainers.image.title": title},
    }


def image(registry: str, repo: str, layers: list[Any]) -> dict[str, Any]:
    config = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2}
    config["digest"] = put_blob(registry, repo, b"{}")
    return {"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layers}


class TestHostileManifests:
    """Manifests a broken or hostile registry may serve: typed refusals, nothing registered."""

    def pull(self, store: CatalogStore, registry: str, repo: str) -> None:
        prov = oci_provisioner(store, registry)
        prov.ensure_present_str(f"oci://{registry}/{repo}:v1")

    def test_an_artifact_without_layers_is_refused(self, store, registry) -> None:
        put_manifest(registry, "h/empty", "v1", image(registry, "h/empty", []))
        with pytest.raises(InvalidModelRef, match="no file"):
            self.pull(store, registry, "h/empty")
        assert [] == store.list()
        assert not store.staging_for(f"oci://{registry}/h/empty:v1").exists()

    def test_titles_that_collide_are_refused(self, store, registry) -> None:
        for repo, titles in (("h/dup", ["m.gguf", "m.gguf"]), ("h/nest", ["a", "a/b"])):
            layers = [file_layer(registry, repo, t.encode() * 3, t) for t in titles]
            put_manifest(registry, repo, "v1", image(registry, repo, layers))
            with pytest.raises(InvalidModelRef, match="collide"):
                self.pull(store, registry, repo)
        assert [] == store.list()

    def test_a_sha512_layer_is_checked_against_its_digest(self, store, registry) -> None:
        layer = file_layer(registry, "h/sha512", b"abc" * 100, "m.gguf", "sha512")
        put_manifest(registry, "h/sha512", "v1", image(registry, "h/sha512", [layer]))
        prov = oci_provisioner(store, registry)
        entry = prov.ensure_present_str(f"oci://{registry}/h/sha512:v1")
        assert ("pass", b"abc" * 100) == (entry.verification, Path(entry.local_path).read_bytes())

    def test_an_index_names_the_manifests_it_lists(self, store, registry) -> None:
        raw = put_manifest(
            registry,
            "h/index",
            "inner",
            image(registry, "h/index", [file_layer(registry, "h/index", b"x", "m.gguf")]),
        )
        child = {
            "mediaType": MANIFEST,
            "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
            "size": len(raw),
            "platform": {"architecture": "s390x", "os": "linux"},
        }
        put_manifest(
            registry,
            "h/index",
            "v1",
            {"schemaVersion": 2, "mediaType": INDEX, "manifests": [child]},
        )
        with pytest.raises(InvalidModelRef, match=child["digest"]):
            self.pull(store, registry, "h/index")
        assert [] == store.list()


def hostile_registry(manifests: dict[str, Any], blobs: list[str]) -> Starlette:
    """A registry that serves whatever manifest it is given, and bytes for any blob."""

    async def manifest(request: Request) -> Response:
        body = manifests[request.path_params["tag"]]
        return Response(json.dumps(body), 200, {"Content-Type": MANIFEST})

    async def anything(request: Request) -> Response:
        blobs.append(request.url.path)
        return Response(b"attacker bytes", 200)

    return Starlette(
        routes=[
            Route("/v2/{repo:path}/manifests/{tag}", manifest, methods=["GET"]),
            Route("/{rest:path}", anything, methods=["GET"]),
        ]
    )


def tar_layer(digest: str, size: object = 14) -> dict[str, Any]:
    return {
        "mediaType": DIR_TYPE,
        "digest": digest,
        "size": size,
        "annotations": {"org.opencontainers.image.title": "repo"},
    }


class TestHostileRegistry:
    """Manifests no real registry would accept, from a server that answers anything."""

    @pytest.mark.parametrize(
        "manifest",
        [
            {"layers": [tar_layer("../../../../escape")]},
            {"layers": [tar_layer("sha256:x/../../../../../escape")]},
            {"layers": [tar_layer("sha256:" + "a" * 64, size="big")]},
            {"layers": [tar_layer("sha256:" + "a" * 64, size=-(2**40))]},
            {"layers": "not a list"},
            ["not", "an", "object"],
        ],
    )
    def test_a_malformed_manifest_is_refused_before_any_download(self, store, manifest) -> None:
        blobs: list[str] = []
        with serve_in_thread(hostile_registry({"v1": manifest}, blobs)) as port:
            registry = f"127.0.0.1:{port}"
            prov = oci_provisioner(store, registry)
            with pytest.raises(InvalidModelRef, match="manifest"):
                prov.ensure_present_str(f"oci://{registry}/h/x:v1")
        assert [] == blobs
        assert [] == store.list()
        assert [] == [p for p in store.root.parent.rglob("escape*")]

    def test_a_directory_layer_that_is_no_archive_is_refused(self, store) -> None:
        digest = "sha256:" + hashlib.sha256(b"attacker bytes").hexdigest()
        blobs: list[str] = []
        with serve_in_thread(
            hostile_registry({"v1": {"layers": [tar_layer(digest)]}}, blobs)
        ) as port:
            registry = f"127.0.0.1:{port}"
            prov = oci_provisioner(store, registry)
            with pytest.raises(InvalidModelRef, match="not a gzip tar archive"):
                prov.ensure_present_str(f"oci://{registry}/h/x:v1")
        assert [] == store.list()

    @pytest.mark.parametrize("media", [DIR_TYPE, "application/vnd.oci.image.layer.v1.tar"])
    def test_a_blob_that_is_not_its_layer_digest_registers_nothing(self, store, media) -> None:
        """A manifest naming one digest while the registry serves other bytes for it."""
        layer = {**tar_layer("sha256:" + "ab" * 32), "mediaType": media}
        layer["annotations"] = {"org.opencontainers.image.title": "m.gguf"}
        with serve_in_thread(hostile_registry({"v1": {"layers": [layer]}}, [])) as port:
            registry = f"127.0.0.1:{port}"
            prov = oci_provisioner(store, registry)
            with pytest.raises(DigestMismatch):
                prov.ensure_present_str(f"oci://{registry}/h/x:v1")
        assert [] == store.list()
        stage = store.staging_for(f"oci://{registry}/h/x:v1")
        assert [] == [p.name for p in stage.rglob("*") if p.is_file()]


def sending_elsewhere(elsewhere: str, *, realm: bool) -> Starlette:
    """A registry that sends the client to ``elsewhere``: as its token realm, or by
    redirecting every blob there."""
    data = b"attacker bytes"
    manifest = {"layers": [tar_layer("sha256:" + hashlib.sha256(data).hexdigest())]}
    manifest["layers"][0]["mediaType"] = "application/octet-stream"

    async def manifests(request: Request) -> Response:
        if realm and "authorization" not in request.headers:
            challenge = f'Bearer realm="{elsewhere}/token",service="x",scope="repository:h/x:pull"'
            return Response(b"", 401, {"WWW-Authenticate": challenge})
        return Response(json.dumps(manifest), 200, {"Content-Type": MANIFEST})

    async def blob(request: Request) -> Response:
        return Response(b"", 302, {"Location": f"{elsewhere}/blob"})

    return Starlette(
        routes=[
            Route("/v2/{repo:path}/manifests/{tag}", manifests, methods=["GET"]),
            Route("/v2/{repo:path}/blobs/{digest}", blob, methods=["GET"]),
        ]
    )


@pytest.mark.parametrize("realm", [True, False], ids=["token-realm", "blob-redirect"])
def test_a_registry_cannot_send_the_pull_past_allowed_hosts(store, realm: bool) -> None:
    """The token realm and blob redirects a registry names pass network_policy like the
    registry itself: a host outside allowed_hosts is never contacted."""
    reached: list[str] = []
    with serve_in_thread(hostile_registry({}, reached)) as other:
        elsewhere = f"http://localhost:{other}"
        with serve_in_thread(sending_elsewhere(elsewhere, realm=realm)) as port:
            registry = f"127.0.0.1:{port}"
            prov = oci_provisioner(store, registry, OutboundPolicy(True, ("127.0.0.1",), ("oci",)))
            with pytest.raises(OutboundDenied, match="'localhost'"):
                prov.ensure_present_str(f"oci://{registry}/h/x:v1")
    assert [] == reached
    assert [] == store.list()


def test_a_registry_that_cannot_be_reached_fails_the_pull_at_once(store) -> None:
    """oras retried a refused connection five times with sleeps of up to 83 s, so a pull
    from a registry that was down hung for over two minutes before it failed."""
    registry = f"127.0.0.1:{free_port()}"
    prov = oci_provisioner(store, registry)
    with pytest.raises(FetchFailed, match="ConnectionError"):
        prov.ensure_present_str(f"oci://{registry}/h/x:v1")
    assert [] == store.list()


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, read in pieces (a member far larger than its compressed form)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def test_a_directory_layer_that_unpacks_past_the_free_space_is_refused(
    tmp_path, store, registry
) -> None:
    """The space check saw only the compressed layer; 128 MiB of zeros in a 128 KiB archive
    were unpacked whatever the disk held."""
    import tarfile

    size = 128 * 1024 * 1024
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("repo/model.safetensors")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size)))
    oras_push(registry, "models/bomb:v1", [Path(f"{bomb}:{DIR_TYPE}")])
    prov = ModelProvisioner(
        store,
        {"oci": OciFetcher(insecure_registries=(registry,))},
        outbound=OPEN,
        free_bytes=lambda _path: 64 * 1024 * 1024,
        reserve_bytes=1024 * 1024,
    )
    with pytest.raises(InsufficientSpace, match="MiB"):
        prov.ensure_present_str(f"oci://{registry}/models/bomb:v1")
    assert [] == store.list()
    assert not list(store.root.rglob("model.safetensors"))


def test_a_trickling_s3_object_fails_the_pull_naming_its_rate(store: CatalogStore) -> None:
    """botocore's body waited for a whole chunk, so a byte now and then held the pull forever;
    each read now counts against the rate floor, and the pull fails typed, naming the rate."""
    gets: list[str | None] = []
    finished: list[bool] = []
    with serve_in_thread(trickling_source("/models/m.gguf", gets, finished)) as port:
        endpoint = f"http://127.0.0.1:{port}"
        fetcher = S3Fetcher(
            endpoint_url=endpoint,
            client=s3_client(endpoint),
            floor=RateFloor(min_bytes=1000, window_s=0.5),
            backoff_s=0.0,
        )
        prov = ModelProvisioner(store, {"s3": fetcher}, outbound=OPEN)
        with pytest.raises(FetchFailed, match=r"after 4 tries: .* \(\d+ B/s\), below the floor"):
            prov.ensure_present_str("s3://models/m.gguf")
    assert (4, []) == (len(gets), finished)  # each try was given up, not read to its end
    assert [] == store.list()


def misplaced_range_source(path: str, data: bytes, gets: list[str | None]) -> Starlette:
    """An S3-compatible store (or a cache in front of it) that drops the first GET halfway,
    then answers the resume with a 206 of the right length taken from byte 0."""
    headers = {"Content-Length": str(len(data)), "ETag": '"v1"'}

    async def serve(request: Request) -> Response:
        if request.method == "HEAD":
            return Response(b"", 200, headers)
        wanted = request.headers.get("range")
        gets.append(wanted)
        if wanted is None and len(gets) == 1:
            return Response(data[: len(data) // 2], 200, {"ETag": '"v1"'})
        if wanted is None:
            return Response(data, 200, headers)
        rest = len(data) - int(wanted.removeprefix("bytes=").rstrip("-"))
        stray = {"ETag": '"v1"', "Content-Range": f"bytes 0-{rest - 1}/{len(data)}"}
        return Response(data[:rest], 206, stray)

    return Starlette(routes=[Route(path, serve, methods=["GET", "HEAD"])])


def test_an_s3_resume_answered_from_another_offset_is_not_appended(store: CatalogStore) -> None:
    """The resumed bytes were appended whatever range the store said they were, so a 206 of
    the right length from the wrong place registered a file that never existed."""
    data = bytes(i % 251 for i in range(16384))  # no half equals the other
    gets: list[str | None] = []
    with serve_in_thread(misplaced_range_source("/models/m.gguf", data, gets)) as port:
        endpoint = f"http://127.0.0.1:{port}"
        fetcher = S3Fetcher(endpoint_url=endpoint, client=s3_client(endpoint), backoff_s=0.0)
        prov = ModelProvisioner(store, {"s3": fetcher}, outbound=OPEN)
        entry = prov.ensure_present_str("s3://models/m.gguf")
    assert (gets[1] or "").startswith("bytes=")
    assert data == Path(entry.local_path).read_bytes()


def test_a_disk_that_fills_during_an_oci_pull_is_a_typed_failure(tmp_path, registry) -> None:
    """The space check trusts the free space the disk reports; a disk that fills anyway (a
    thin volume, another writer) failed an oci:// pull with the untyped OSError of the
    library's write, which the API reported as INTERNAL. It is InsufficientSpace."""
    from tests.support.disks import small_tmpfs

    blob = tmp_path / "big.gguf"
    blob.write_bytes(bytes(i % 251 for i in range(2 * 1024 * 1024)))
    oras_push(registry, "models/big:v1", [blob])
    with small_tmpfs(tmp_path / "disk") as disk:
        store = CatalogStore(disk / "catalog")
        prov = ModelProvisioner(
            store,
            {"oci": OciFetcher(insecure_registries=(registry,))},
            outbound=OPEN,
            free_bytes=lambda _path: 1 << 40,  # what a thin volume may well report
        )
        with pytest.raises(InsufficientSpace, match="full"):
            prov.ensure_present_str(f"oci://{registry}/models/big:v1")
        assert [] == store.list()
