"""ModelRef: parse and format model references; pure (no I/O beyond path arithmetic).

Accepted forms, each with its normalized text (which is also the catalog id):

    hf:org/repo[@revision][/path/in/repo]     a Hugging Face repo, or one file in it
    file:/abs/path  |  /abs/path  |  rel/path  a local file or directory (rel: against a base dir)
    https://host[:port]/path  (http:// too)   a remote file; the query is kept for the fetch but
                                               never in the id
    s3://bucket/key                            an object in an S3-compatible store
    oci://registry[:port]/repo:tag | @sha256:… an artifact in an OCI registry

``format_ref(parse_ref(text))`` is the normalized text, and parsing it again gives the same ref.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from llama_orch.errors import InvalidModelRef

ACCEPTED_FORMS = (
    "hf:org/repo[@revision][/file.gguf], file:/abs/path (or a path relative to the config "
    "file), https://host/path, s3://bucket/key, oci://registry/repo:tag or "
    "oci://registry/repo@sha256:<64 hex>"
)

_HF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_HF_REV = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?")
_OCI_REPO = re.compile(r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*")
_OCI_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
#: A URL's user information: everything from ``//`` to the last ``@`` before the path.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_SEGMENT_BAD = frozenset({"", ".", ".."})
#: Longest name a path may hold: NAME_MAX (255 bytes) less the longest suffix a download
#: stages the file under (".part.validator").
MAX_NAME_BYTES = 240


@dataclass(frozen=True, slots=True)
class HfRef:
    org: str
    repo: str
    revision: str | None = None
    path: str | None = None

    @property
    def repo_id(self) -> str:
        return f"{self.org}/{self.repo}"


@dataclass(frozen=True, slots=True)
class FileRef:
    path: str
    #: Real folders the file read must lie under (catalog.local_roots, for refs a client
    #: sent); checked again on the opened file. None: no bound.
    within: tuple[str, ...] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class UrlRef:
    url: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme


@dataclass(frozen=True, slots=True)
class S3Ref:
    bucket: str
    key: str


@dataclass(frozen=True, slots=True)
class OciRef:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def target(self) -> str:
        """What an OCI client pulls: ``registry/repo:tag`` or ``registry/repo@sha256:…``."""
        suffix = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"{self.registry}/{self.repository}{suffix}"


ModelRef = HfRef | FileRef | UrlRef | S3Ref | OciRef


def _bad(text: str, why: str) -> InvalidModelRef:
    # A refusal quotes the ref, but never the credentials a URL may carry before its host:
    # "https://TOKEN@host" holds a secret as surely as "https://user:password@host" does.
    shown = _USERINFO.sub(r"\1[REDACTED]@", text)
    return InvalidModelRef(
        f"model ref {shown!r} is not valid: {why}", hint=f"accepted forms: {ACCEPTED_FORMS}"
    )


def safe_relative(path: str, text: str) -> str:
    """A relative POSIX path with no empty, ``.`` or ``..`` segment and no name too long for a
    file; else InvalidModelRef."""
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise _bad(text, f"path {path!r} must be relative, with '/' separators")
    segments = path.split("/")
    if any(segment in _SEGMENT_BAD for segment in segments):
        raise _bad(text, f"path {path!r} has an empty, '.' or '..' segment")
    longest = max(len(segment.encode()) for segment in segments)
    if longest > MAX_NAME_BYTES:
        raise _bad(
            text, f"a name in its path has {longest} bytes; file names have at most 240 here"
        )
    return path


def disjoint_paths(paths: list[str], source: str) -> None:
    """Refuse a listing in which two files land on one path, or one inside another's file
    ("a" and "a/b"): no folder can hold both, and the later would replace the earlier."""
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise _collision(source, path)
        seen.add(path)
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if (parent := "/".join(parts[:depth])) in seen:
                raise _collision(source, f"{parent} and {path}")


def _collision(source: str, what: str) -> InvalidModelRef:
    return InvalidModelRef(
        f"{source} lists file names that collide on disk: {what}",
        hint="fix the source so each file has a path of its own",
    )


def _parse_hf(text: str, body: str) -> HfRef:
    parts = body.split("/", 2)
    if len(parts) < 2:
        raise _bad(text, "hf: needs org/repo")
    org, repo_rev = parts[0], parts[1]
    repo, _, revision = repo_rev.partition("@")
    if not _HF_NAME.fullmatch(org) or not _HF_NAME.fullmatch(repo):
        raise _bad(text, "org and repo are letters, digits, '.', '_' or '-'")
    if "@" in repo_rev and not _HF_REV.fullmatch(revision):
        raise _bad(text, f"revision {revision!r} is letters, digits, '.', '_' or '-'")
    path = safe_relative(parts[2], text) if len(parts) == 3 else None
    return HfRef(org, repo, revision or None, path)


def _parse_file(text: str, path: str, base_dir: str | None) -> FileRef:
    if "\x00" in path or not path:
        raise _bad(text, "empty path")
    if path.startswith("~"):
        # As in the config's own paths: the home folder, never a folder named "~".
        path = posixpath.expanduser(path)
    if not path.startswith("/"):
        if base_dir is None:
            raise _bad(text, "a relative path needs a base directory; use file:/abs/path")
        path = posixpath.join(base_dir, path)
    return FileRef(posixpath.normpath(path).replace("//", "/"))


def _parse_url(text: str) -> UrlRef:
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # an unclosed or invalid [IPv6] host
        raise _bad(text, f"not a URL ({exc})") from exc
    if parts.username is not None or parts.password is not None:
        raise _bad(text, "credentials in the URL are refused; they would be stored and logged")
    try:
        port = parts.port
    except ValueError as exc:
        raise _bad(text, "bad port") from exc
    host = (parts.hostname or "").lower()
    if not host or not _HOST.fullmatch(host):
        raise _bad(text, "no valid host")
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443}[scheme]
    netloc = host if port in (None, default) else f"{host}:{port}"
    path = parts.path or "/"
    if any(segment in ("..", ".") for segment in path.split("/")):
        raise _bad(text, "'.' and '..' segments are refused")
    return UrlRef(urlunsplit((scheme, netloc, path, parts.query, "")))


def _parse_s3(text: str, body: str) -> S3Ref:
    bucket, _, key = body.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise _bad(text, f"bucket {bucket!r} is 3-63 lowercase letters, digits, '.' or '-'")
    if not key:
        raise _bad(text, "s3:// needs a key after the bucket")
    return S3Ref(bucket, safe_relative(key, text))


def _parse_oci(text: str, body: str) -> OciRef:
    registry, _, rest = body.partition("/")
    registry = registry.lower()
    if not _HOST.fullmatch(registry) or not rest:
        raise _bad(text, "oci:// needs registry[:port]/repository")
    if "@" in rest:
        repository, _, digest = rest.partition("@")
        if not _SHA256.fullmatch(digest):
            raise _bad(text, "an OCI digest is sha256:<64 lowercase hex>")
        tag = None
    else:
        repository, sep, tag_text = rest.rpartition(":")
        if not sep:
            repository, tag_text = rest, "latest"
        if not _OCI_TAG.fullmatch(tag_text):
            raise _bad(text, f"tag {tag_text!r} is letters, digits, '.', '_' or '-'")
        tag, digest = tag_text, None
    if not _OCI_REPO.fullmatch(repository):
        raise _bad(text, f"repository {repository!r} is lowercase path components")
    return OciRef(registry, repository, tag, digest)


def parse_ref(text: str, *, base_dir: str | None = None) -> ModelRef:
    """Parse ``text`` into a ModelRef; relative paths resolve against ``base_dir``."""
    text = text.strip()
    scheme, sep, body = text.partition(":")
    scheme = scheme.lower() if sep else ""
    if scheme == "hf":
        return _parse_hf(text, body)
    if scheme == "file":
        return _parse_file(text, body, base_dir)
    if scheme in ("http", "https"):
        return _parse_url(text)
    if scheme == "s3":
        if not body.startswith("//"):
            raise _bad(text, "use s3://bucket/key")
        return _parse_s3(text, body[2:])
    if scheme == "oci":
        if not body.startswith("//"):
            raise _bad(text, "use oci://registry/repo:tag")
        return _parse_oci(text, body[2:])
    if sep and re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) and body.startswith("//"):
        raise _bad(text, f"unknown scheme {scheme!r}")
    return _parse_file(text, text, base_dir)


def format_ref(ref: ModelRef) -> str:
    """The normalized text of ``ref``; ``parse_ref`` of it gives ``ref`` back."""
    match ref:
        case HfRef(org, repo, revision, path):
            rev = f"@{revision}" if revision else ""
            tail = f"/{path}" if path else ""
            return f"hf:{org}/{repo}{rev}{tail}"
        case FileRef(path):
            return f"file:{path}"
        case UrlRef(url):
            return url
        case S3Ref(bucket, key):
            return f"s3://{bucket}/{key}"
        case OciRef():
            return f"oci://{ref.target}"


def ref_id(ref: ModelRef) -> str:
    """The stable catalog id: the normalized text, minus a URL's query (it may carry a token)."""
    if isinstance(ref, UrlRef):
        parts = urlsplit(ref.url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return format_ref(ref)


def public_name(text: str) -> str:
    """``text`` less a URL's credentials, query and fragment: a pool's model may be such a URL
    (an engine llama-orch does not pull for is given it as is), which is never shown, so this
    is the name for it that may be shown, and sent back as a task's model_ref, anywhere."""
    without = _USERINFO.sub(r"\1", text)
    if "://" not in without:
        return without
    return without.split("#", 1)[0].split("?", 1)[0]


#: Bare names ending like this are model files (relative paths), not served-model names.
MODEL_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin", ".onnx")


def looks_like_ref(text: str) -> bool:
    """True when ``text`` names a source (a scheme, a path, a model file), not a plain name.

    Plain names (``llama3``, ``meta-llama/Llama-3-8B`` for an external engine) stay names.
    """
    return text.startswith(
        ("hf:", "file:", "http://", "https://", "s3://", "oci://", "/", "./", "../")
    ) or text.endswith(MODEL_FILE_SUFFIXES)
