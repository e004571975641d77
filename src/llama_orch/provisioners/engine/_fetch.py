"""Download an engine archive with its checksum verified, and unpack it without escaping.

An archive entry that is absolute, walks up with ``..``, or is a link (or device) pointing out of
the install directory fails the whole unpack before anything is written.
"""

from __future__ import annotations

import hashlib
import shutil
import ssl
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import httpx

from llama_orch.provisioners.engine._types import ProvisionError

#: Bytes read per chunk while hashing a download.
_CHUNK = 1 << 16


def tls_context(ca_roots: tuple[str, ...]) -> ssl.SSLContext | bool:
    """The system trust store, plus the configured extra CA roots (a private mirror's CA)."""
    if not ca_roots:
        return True
    context = ssl.create_default_context()
    for path in ca_roots:
        context.load_verify_locations(cafile=str(Path(path).expanduser()))
    return context


async def download(url: str, dest: Path, *, ca_roots: tuple[str, ...] = ()) -> str:
    """Stream ``url`` into ``dest``; the sha256 hex of what was written."""
    digest = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    shown = url.split("?")[0]
    try:
        async with (
            httpx.AsyncClient(
                verify=tls_context(ca_roots), trust_env=False, follow_redirects=True, timeout=60
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise ProvisionError(
                    "download", f"GET {shown} answered HTTP {response.status_code}"
                )
            with dest.open("wb") as out:
                async for chunk in response.aiter_bytes(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise ProvisionError(
            "download", f"GET {shown} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(expected: str, actual_hex: str, what: str) -> None:
    """``expected`` is ``sha256:<hex>``; a mismatch names both digests."""
    want = expected.removeprefix("sha256:").lower()
    if want != actual_hex:
        raise ProvisionError(
            "verify",
            f"{what} has sha256:{actual_hex}, the config pins {expected}; the download is "
            "corrupt or the pin is stale; nothing was installed",
        )


def _safe_name(name: str, what: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise ProvisionError("unpack", f"{what} holds an absolute path {name!r}; refused")
    if ".." in path.parts:
        raise ProvisionError("unpack", f"{what} holds a path escaping its directory {name!r}")
    return path


def _inside(base: PurePosixPath, link: str) -> bool:
    if link.startswith("/"):
        return False
    depth = 0
    for part in (*base.parent.parts, *PurePosixPath(link).parts):
        depth = depth - 1 if part == ".." else depth + (part not in ("", "."))
        if depth < 0:
            return False
    return True


def unpack(archive: Path, dest: Path, *, name: str) -> None:
    """Unpack a .tar.gz/.tgz/.tar.xz/.tar or .zip into ``dest`` (created; must not exist)."""
    dest.mkdir(parents=True)
    if zipfile.is_zipfile(archive):
        _unzip(archive, dest, name)
        return
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                path = _safe_name(member.name, name)
                if member.issym() or member.islnk():
                    if not _inside(path, member.linkname) or member.islnk():
                        raise ProvisionError(
                            "unpack",
                            f"{name} holds a link {member.name!r} -> {member.linkname!r} "
                            "pointing out of the install directory; refused",
                        )
                elif not (member.isfile() or member.isdir()):
                    raise ProvisionError(
                        "unpack", f"{name} holds a special file {member.name!r}; refused"
                    )
            tf.extractall(dest, members=members, filter="data")
    except tarfile.TarError as exc:
        raise ProvisionError("unpack", f"{name} is not a tar or zip archive: {exc}") from exc


def _unzip(archive: Path, dest: Path, name: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _safe_name(info.filename, name)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ProvisionError("unpack", f"{name} holds a link {info.filename!r}; refused")
        for info in infos:
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                target.chmod(mode)


def find_program(root: Path, program: str) -> Path | None:
    """The executable named ``program`` under ``root`` (``bin/`` first, then anywhere)."""
    candidates = sorted(
        (p for p in root.rglob(program) if p.is_file()),
        key=lambda p: (p.parent.name != "bin", len(p.parts), str(p)),
    )
    return candidates[0] if candidates else None
