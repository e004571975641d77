"""``oci://registry/repo:tag|@sha256:…`` through ``oras``: model artifacts in an OCI registry.

Layers are downloaded one by one so each title is checked before it becomes a path, directory
layers are unpacked with tarfile's ``data`` filter (no absolute paths, no links out), and each
layer's digest is handed to the provisioner as the sha256 the registry vouches for.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from llama_orch.catalog.refs import ModelRef, OciRef, safe_relative
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
                url, "GET", headers={"Accept": ", ".join(MANIFEST_TYPES)}
            )
            if response.status_code == 404:
                raise NotFound(f"oci://{ref.target} is not in the registry")
            if response.status_code != 200:
                raise FetchFailed(f"oci://{ref.target}: HTTP {response.status_code}")
            manifest: dict[str, Any] = response.json()
            layers = manifest.get("layers", [])
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
            return Fetched(
                path=entries[0], claimed_sha256={"": claimed[entries[0].name]}, source=source
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
            actual = f"sha256:{sha256_file(archive).value}"
            if actual != digest:
                raise DigestMismatch(
                    f"layer {name} of oci://{ref.target} hashes to {actual}, expected {digest}"
                )
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
        algo, _, value = digest.partition(":")
        return {name: value} if algo == "sha256" else {}
