"""Artifacts over HTTP (SPEC §6.6): store, fetch, and list by tag with paging."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.artifacts import check_artifact_id, check_tag
from llama_orch.contracts.api import Artifact, ArtifactPage, ArtifactRef, StoredArtifact
from llama_orch.errors import InvalidParams
from llama_orch.server.body import read_body
from llama_orch.server.data_plane import _validation_message, json_response
from llama_orch.server.deps import deps_of

#: Page sizes of GET /v1/artifacts.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_DIGITS = re.compile(r"[0-9]{1,9}")


async def _read_body(request: Request, limit: int) -> bytes:
    # JSON with whitespace may be larger than its canonical form; allow twice the limit.
    body = await read_body(
        request,
        2 * limit,
        why=f"; artifacts are limited to {limit} bytes as canonical JSON "
        "(server.artifact_max_bytes)",
    )
    if not body:
        raise InvalidParams("request body is empty; send a JSON Artifact {kind, content, ...}")
    return body


#: A run of digits that may be an integer past 64 bits, which orjson reads as a float: the
#: stored document would hold a different number than the one sent.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _exact_integers(raw: bytes) -> Any:
    """The body, already checked as strict JSON, with every integer read exactly (one past 64
    bits is then refused by the store, which has no canonical form for it)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidParams("invalid Artifact: the body nests too deeply") from None


async def create_artifact(request: Request) -> Response:
    store = deps_of(request).artifacts
    raw = await _read_body(request, store.max_bytes)
    try:
        # orjson parses strict JSON: NaN, Infinity and 1e999 are refused here, where the lax
        # parser behind model_validate_json would let canonical JSON turn them into null.
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidParams(f"invalid Artifact: body is not valid JSON: {exc}") from None
    if _LONG_DIGITS.search(raw):
        document = _exact_integers(raw)
    try:
        artifact = Artifact.model_validate(document)
    except ValidationError as exc:
        raise InvalidParams(f"invalid Artifact: {_validation_message(exc)}") from None
    stored = await store.put_synced(artifact.model_dump(exclude_defaults=True))
    body = ArtifactRef.model_validate(stored.ref).model_dump_json().encode()
    return json_response(body, status=201 if stored.created else 200)


def _render(found: dict[str, Any]) -> bytes:
    return StoredArtifact.model_validate(found).model_dump_json().encode()


async def get_artifact(request: Request) -> Response:
    store = deps_of(request).artifacts
    # A large artifact is read, re-hashed and rendered off the event loop.
    body = await store.fetch(check_artifact_id(request.path_params["artifact_id"]), _render)
    return json_response(body)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    # ASCII digits only: str.isdigit() also takes superscripts, which int() refuses.
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidParams(f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw[:20]!r}")
    return int(raw)


async def list_artifacts(request: Request) -> Response:
    store = deps_of(request).artifacts
    params = request.query_params
    tag = params.get("tag")
    after = params.get("after")
    items, following = store.page(
        check_tag(tag) if tag is not None else None,
        limit=_limit(params.get("limit")),
        after=check_artifact_id(after) if after is not None else None,
    )
    page = ArtifactPage(items=[ArtifactRef.model_validate(i) for i in items], next=following)
    return json_response(page.model_dump_json().encode())


async def artifacts(request: Request) -> Response:
    """One route for both methods, so a 405 lists both in ``Allow``."""
    if request.method == "POST":
        return await create_artifact(request)
    return await list_artifacts(request)


routes = [
    Route("/v1/artifacts", artifacts, methods=["GET", "POST"]),
    Route("/v1/artifacts/{artifact_id}", get_artifact, methods=["GET"]),
]
