"""``oci://registry/repo:tag|@sha256:…`` through ``oras``: model artifacts in an OCI registry.

Layers are downloaded one by one so each title is checked before it becomes a path, directory
layers are unpacked with tarfile's ``data`` filter (no absolute paths, no links out), and each
layer's digest is handed to the provisioner as the sha256 the registry vouches for.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Any

from llama_orch.catalog.refs import ModelRef, OciRef, disjoint_paths, safe_relative
from llama_orch.catalog.verify import sha256_file
from llama_orch.errors import DigestMismatch, FetchFailed, InvalidModelRef, NotFound
from llama_orch.provisioners.fetch.base import Fetched
from llama_orch.provisioners.policy import OutboundPolicy
from llama_orch.provisioners.progress import PullProgress

TITLE = "org.opencontainers.image.title"
DIR_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
#: Accepted only to say what they list: a model artifact is one manifest, not a choice of them.
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
#: Digest algorithms of the OCI image spec; a layer under any other one cannot be checked.
DIGEST_ALGORITHMS = ("sha256", "sha384", "sha512")


class OciFetcher:
    def __init__(self, *, insecure_registries: tuple[str, ...] = (), tls_verify: bool | str = True):
        #: Registries reached over plain HTTP (a local registry without TLS).
        self.insecure_registries = insecure_registries
        self.tls_verify = tls_verify

    def endpoint(self, ref: ModelRef) -> tuple[str, str]:
        assert isinstance(ref, OciRef)
        return "oci", ref.registry.split(":", 1)[0]

    def fetch(
        self, ref: ModelRef, stage: Path, progress: PullProgress, outbound: OutboundPolicy
    ) -> Fetched:
        assert isinstance(ref, OciRef)
        import oras.provider
        import requests

        registry = oras.provider.Registry(
            hostname=ref.registry,
            insecure=ref.registry in self.insecure_registries,
            tls_verify=self.tls_verify,
        )
        try:
            container = registry.get_container(ref.target)
            url = f"{registry.prefix}://{container.manifest_url()}"
            response = registry.do_request(
                url, "GET", headers={"Accept": ", ".join(MANIFEST_TYPES + INDEX_TYPES)}
            )
            if response.status_code == 404:
                raise NotFound(f"oci://{ref.target} is not in the registry")
            if response.status_code != 200:
                raise FetchFailed(f"oci://{ref.target}: HTTP {response.status_code}")
            manifest: dict[str, Any] = response.json()
            _refuse_index(manifest, ref)
            layers = manifest.get("layers", [])
            titles = [(layer.get("annotations") or {}).get(TITLE) for layer in layers]
            disjoint_paths([str(t) for t in titles if t], f"oci://{ref.target}")
            files = stage / "files"
            files.mkdir(parents=True, exist_ok=True)
            progress.set_total(sum(int(layer.get("size", 0)) for layer in layers))
            claimed: dict[str, str] = {}
            for layer in layers:
                claimed.update(self._layer(registry, container, layer, files, ref))
                progress.add(int(layer.get("size", 0)))
        except requests.RequestException as exc:
            raise FetchFailed(f"oci://{ref.target}: {type(exc).__name__}") from exc
        source = {"registry": ref.registry, "repository": ref.repository}
        digest = response.headers.get("Docker-Content-Digest") or ref.digest
        if digest:
            source["manifest_digest"] = digest
        if ref.tag:
            source["tag"] = ref.tag
        entries = [p for p in files.iterdir()]
        single = len(entries) == 1 and entries[0].is_file()
        if single:
            vouched = claimed.get(entries[0].name)
            return Fetched(
                path=entries[0], claimed_sha256={"": vouched} if vouched else {}, source=source
            )
        return Fetched(path=files, claimed_sha256=claimed, source=source)

    def _layer(
        self, registry: Any, container: Any, layer: dict[str, Any], files: Path, ref: OciRef
    ) -> dict[str, str]:
        digest = str(layer["digest"])
        title = (layer.get("annotations") or {}).get(TITLE)
        if not title:
            raise InvalidModelRef(f"oci://{ref.target} has a layer without a file title")
        name = safe_relative(str(title), f"oci://{ref.target}")
        if layer.get("mediaType") == DIR_MEDIA_TYPE:
            archive = files.parent / f"{digest.replace(':', '_')}.tar.gz"
            registry.download_blob(container, digest, str(archive))
            _check_digest(archive, digest, f"layer {name} of oci://{ref.target}")
            with tarfile.open(archive) as tar:
                try:
                    tar.extractall(files, filter="data")
                except tarfile.FilterError as exc:
                    raise InvalidModelRef(f"oci://{ref.target}: unsafe archive: {exc}") from exc
            archive.unlink()
            return {}
        target = files / name
        target.parent.mkdir(parents=True, exist_ok=True)
        registry.download_blob(container, digest, str(target))
        # A sha256 digest is checked by the provisioner with the rest; another algorithm here,
        # after which the file's sha256 is what the registry vouched for.
        algo, _, value = digest.partition(":")
        if algo != "sha256":
            _check_digest(target, digest, f"layer {name} of oci://{ref.target}")
            value = sha256_file(target).value
        return {name: value}


def _refuse_index(manifest: dict[str, Any], ref: OciRef) -> None:
    if manifest.get("mediaType") not in INDEX_TYPES and "manifests" not in manifest:
        return
    listed = [
        f"{child.get('digest')} ({_platform(child)})" for child in manifest.get("manifests") or []
    ]
    raise InvalidModelRef(
        f"oci://{ref.target} is an image index, not a model artifact; it lists "
        f"{', '.join(listed) or 'no manifest'}",
        hint=f"pull one of them by digest: oci://{ref.registry}/{ref.repository}@sha256:...",
    )


def _platform(child: dict[str, Any]) -> str:
    platform = child.get("platform") or {}
    return "/".join(str(platform[k]) for k in ("os", "architecture") if k in platform) or "any"


def _check_digest(path: Path, digest: str, what: str) -> None:
    algo, _, expected = digest.partition(":")
    if algo not in DIGEST_ALGORITHMS:
        raise InvalidModelRef(
            f"{what} has digest {digest}; only {', '.join(DIGEST_ALGORITHMS)} can be checked",
            hint="push the artifact again with sha256 digests",
        )
    hasher = hashlib.new(algo)
    with path.open("rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            hasher.update(chunk)
    if hasher.hexdigest() != expected.lower():
        raise DigestMismatch(f"{what} hashes to {algo}:{hasher.hexdigest()}, expected {digest}")
