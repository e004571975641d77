"""A Hugging Face Hub that speaks what ``huggingface_hub`` downloads use (simulated).

Routes: repo info (``/api/models/{repo}[/revision/{rev}]``) with ``sha`` and ``siblings``, the
recursive tree (``/api/models/{repo}/tree/{rev}``), and ``HEAD``/``GET
/{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` (git blob) or ``X-Linked-Etag``
+ ``X-Linked-Size`` (LFS files, ETag = sha256), ``Content-Length`` on the HEAD too, and Range.
Unknown repos, revisions and files answer 404 with ``X-Error-Code``. No Xet headers are sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class HubRepo:
    files: dict[str, bytes]
    #: Files served as LFS (sha256 ETag, X-Linked-* headers); others are plain git blobs.
    lfs: set[str] = field(default_factory=set)
    #: sha256 the repo info advertises instead of the real one (a tampered mirror).
    lie_sha256: dict[str, str] = field(default_factory=dict)
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    private_token: str | None = None


@dataclass
class HubState:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    authorizations: list[str | None] = field(default_factory=list)
    downloads: int = 0


def _error(code: str, message: str, status: int = 404, commit: str | None = None) -> Response:
    headers = {"X-Error-Code": code}
    if commit:
        headers["X-Repo-Commit"] = commit
    return JSONResponse({"error": message}, status, headers=headers)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fake_hf_hub(state: HubState) -> Starlette:  # noqa: C901 - one closure per hub route
    def lookup(request: Request) -> HubRepo | Response:
        state.authorizations.append(request.headers.get("authorization"))
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = state.repos.get(repo_id)
        if repo is None:
            return _error("RepoNotFound", f"Repository {repo_id} not found")
        if repo.private_token and request.headers.get("authorization") != (
            f"Bearer {repo.private_token}"
        ):
            return _error("RepoNotFound", "Invalid credentials", status=401)
        rev = request.path_params.get("rev", "main")
        if rev not in ("main", repo.sha):
            return _error("RevisionNotFound", f"Revision {rev} not found")
        return repo

    def lfs_of(repo: HubRepo, name: str) -> dict[str, object]:
        data = repo.files[name]
        sha = repo.lie_sha256.get(name, _sha256(data))
        return {"size": len(data), "sha256": sha, "pointerSize": 134}

    async def info(request: Request) -> Response:
        repo = lookup(request)
        if isinstance(repo, Response):
            return repo
        siblings = []
        for name, data in sorted(repo.files.items()):
            sibling: dict[str, object] = {"rfilename": name, "size": len(data)}
            if name in repo.lfs:
                sibling["lfs"] = lfs_of(repo, name)
            siblings.append(sibling)
        body = {
            "id": f"{request.path_params['org']}/{request.path_params['name']}",
            "sha": repo.sha,
            "siblings": siblings,
            "private": repo.private_token is not None,
        }
        return JSONResponse(body)

    async def tree(request: Request) -> Response:
        repo = lookup(request)
        if isinstance(repo, Response):
            return repo
        entries = []
        for name, data in sorted(repo.files.items()):
            entry: dict[str, object] = {
                "type": "file",
                "path": name,
                "size": len(data),
                "oid": _git_oid(data),
            }
            if name in repo.lfs:
                lfs = lfs_of(repo, name)
                entry["lfs"] = {"oid": lfs["sha256"], "size": lfs["size"], "pointerSize": 134}
            entries.append(entry)
        return JSONResponse(entries)

    async def resolve(request: Request) -> Response:
        repo = lookup(request)
        if isinstance(repo, Response):
            return repo
        path = request.path_params["path"]
        if path not in repo.files:
            return _error("EntryNotFound", f"{path} does not exist", commit=repo.sha)
        data = repo.files[path]
        headers = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if path in repo.lfs:
            headers["ETag"] = f'"{_git_oid(data)}"'
            headers["X-Linked-Etag"] = f'"{_sha256(data)}"'
            headers["X-Linked-Size"] = str(len(data))
        else:
            headers["ETag"] = f'"{_git_oid(data)}"'
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return Response(b"", 200, headers)
        state.downloads += 1
        start = 0
        status = 200
        if "range" in request.headers:
            start = int(request.headers["range"].removeprefix("bytes=").split("-")[0])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return Response(data[start:], status, headers)

    return Starlette(
        routes=[
            Route("/api/models/{org}/{name}", info, methods=["GET"]),
            Route("/api/models/{org}/{name}/revision/{rev}", info, methods=["GET"]),
            Route("/api/models/{org}/{name}/tree/{rev}", tree, methods=["GET"]),
            Route("/{org}/{name}/resolve/{rev}/{path:path}", resolve, methods=["GET", "HEAD"]),
        ]
    )
