"""``oci://registry/repo:tag|@sha256:…`` through ``oras``: model artifacts in an OCI registry.

Layers are downloaded one by one so each title is checked before it becomes a path, directory
layers are unpacked with tarfile's ``data`` filter (no absolute paths, no links out), and each
layer's digest is handed to the provisioner as the sha256 the registry vouches for.
"""

from __future__ import annotations

import functools
import hashlib
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llama_orch.catalog.refs import ModelRef, OciRef, disjoint_paths, safe_relative
from llama_orch.catalog.verify import sha256_file
from llama_orch.errors import (
    DigestMismatch,
    FetchFailed,
    InvalidModelRef,
    NotFound,
    OutboundDenied,
)
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
#: Digests of the OCI image spec's algorithms; one in any other form is refused before it is
#: used in a request or a file name.
DIGEST_PATTERN = r"^(sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128})$"


class _Descriptor(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    media_type: str = Field("", alias="mediaType")
    digest: str = Field(pattern=DIGEST_PATTERN)
    size: int = Field(ge=0)
    annotations: dict[str, str] = Field(default_factory=dict)
    platform: dict[str, Any] | None = None


class _Manifest(BaseModel):
    """The fields a pull uses of an image manifest (or index), checked before any is used."""

    model_config = ConfigDict(populate_by_name=True)

    media_type: str | None = Field(None, alias="mediaType")
    layers: list[_Descriptor] = Field(default_factory=list)
    manifests: list[_Descriptor] | None = None


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
        refused = _guard(registry.session, outbound)
        _no_retry_sleeps(registry)
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
            manifest = _parse_manifest(response.content, ref)
            _refuse_index(manifest, ref)
            layers = manifest.layers
            titles = [layer.annotations.get(TITLE) for layer in layers]
            disjoint_paths([t for t in titles if t], f"oci://{ref.target}")
            files = stage / "files"
            files.mkdir(parents=True, exist_ok=True)
            progress.set_total(sum(layer.size for layer in layers))
            claimed: dict[str, str] = {}
            for layer in layers:
                claimed.update(self._layer(registry, container, layer, files, ref, progress))
                progress.add(layer.size)
        except refused as exc:
            raise exc.args[0] from None
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
        self,
        registry: Any,
        container: Any,
        layer: _Descriptor,
        files: Path,
        ref: OciRef,
        progress: PullProgress,
    ) -> dict[str, str]:
        digest = layer.digest
        title = layer.annotations.get(TITLE)
        if not title:
            raise InvalidModelRef(f"oci://{ref.target} has a layer without a file title")
        name = safe_relative(title, f"oci://{ref.target}")
        if layer.media_type == DIR_MEDIA_TYPE:
            archive = files.parent / f"{digest.replace(':', '_')}.tar.gz"
            registry.download_blob(container, digest, str(archive))
            _check_digest(archive, digest, f"layer {name} of oci://{ref.target}")
            try:
                with tarfile.open(archive) as tar:
                    members = tar.getmembers()
                    # The space check so far saw the compressed layer; unpacked it may be
                    # any number of times larger.
                    progress.expect_more(sum(m.size for m in members if m.isfile()))
                    tar.extractall(files, members=members, filter="data")
            except tarfile.FilterError as exc:
                raise InvalidModelRef(f"oci://{ref.target}: unsafe archive: {exc}") from exc
            except tarfile.TarError as exc:
                raise InvalidModelRef(
                    f"layer {name} of oci://{ref.target} is not a gzip tar archive: {exc}"
                ) from exc
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


def _no_retry_sleeps(registry: Any) -> None:
    """oras retries any failed request five times, sleeping up to 83 s between tries, so a
    registry that was down held a pull for over two minutes. Failures here are typed and the
    pull is simply asked again, so this registry's requests are made once."""
    once = getattr(type(registry).do_request, "__wrapped__", None)
    if once is not None:
        registry.do_request = functools.partial(once, registry)


def _guard(session: Any, outbound: OutboundPolicy) -> type[Exception]:
    """Make every request of the registry's session pass ``outbound``: the token realm and the
    blob redirects a registry names are hosts like any other. Returns the exception type a
    refusal travels in, holding the OutboundDenied as its only argument."""
    import oras.auth
    import requests.adapters

    class Refused(oras.auth.AuthenticationException):  # type: ignore[misc]
        # oras retries any other exception for minutes; this kind it re-raises at once.
        pass

    class Guarded(requests.adapters.HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                outbound.check("oci", urlsplit(str(request.url)).hostname or "")
            except OutboundDenied as exc:
                raise Refused(exc) from exc
            return super().send(request, *args, **kwargs)

    for prefix in ("http://", "https://"):
        session.mount(prefix, Guarded())
    return Refused


def _parse_manifest(raw: bytes, ref: OciRef) -> _Manifest:
    """The manifest, or InvalidModelRef: its digests become request paths and file names."""
    try:
        return _Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the document"
        raise InvalidModelRef(
            f"oci://{ref.target} serves a malformed manifest ({exc.error_count()} problems; "
            f"{where}: {first['msg']})",
            hint="the registry or the artifact is broken; push the artifact again",
        ) from exc


def _refuse_index(manifest: _Manifest, ref: OciRef) -> None:
    if manifest.media_type not in INDEX_TYPES and manifest.manifests is None:
        return
    listed = [f"{child.digest} ({_platform(child)})" for child in manifest.manifests or []]
    raise InvalidModelRef(
        f"oci://{ref.target} is an image index, not a model artifact; it lists "
        f"{', '.join(listed) or 'no manifest'}",
        hint=f"pull one of them by digest: oci://{ref.registry}/{ref.repository}@sha256:...",
    )


def _platform(child: _Descriptor) -> str:
    platform = child.platform or {}
    return "/".join(str(platform[k]) for k in ("os", "architecture") if k in platform) or "any"


def _check_digest(path: Path, digest: str, what: str) -> None:
    algo, _, expected = digest.partition(":")
    hasher = hashlib.new(algo)
    with path.open("rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            hasher.update(chunk)
    if hasher.hexdigest() != expected.lower():
        # Wrong bytes are never kept: a layer may be gigabytes, and no later pull uses them.
        path.unlink(missing_ok=True)
        raise DigestMismatch(f"{what} hashes to {algo}:{hasher.hexdigest()}, expected {digest}")
