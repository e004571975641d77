"""Control plane: the model catalog (``/v1/catalog/models``): pull, list, show, verify, state,
delete. Parses, calls the model provisioner, translates; decides nothing."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.catalog.entries import Lifecycle, ModelEntry
from llama_orch.catalog.refs import parse_ref, ref_id
from llama_orch.catalog.roots import check_local_root
from llama_orch.catalog.verify import parse_digest
from llama_orch.contracts.catalog import (
    Accepted,
    CatalogModel,
    CatalogModelList,
    Manifest,
    PullRequest,
    PullStatus,
    StateRequest,
)
from llama_orch.errors import Conflict, InvalidParams, ModelDeprecated, NotFound
from llama_orch.observability.narration import narrate
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.progress import PullProgress, PullState
from llama_orch.server.body import read_body
from llama_orch.server.deps import deps_of
from llama_orch.server.pools_api import task_control

MAX_PAGE = 1000
DEFAULT_PAGE = 100
#: A pull or state request is a ref, a digest and a few fields: far below this.
_BODY_LIMIT = 65_536


def _provisioner(request: Request) -> ModelProvisioner:
    models = deps_of(request).models
    if models is None:
        raise NotFound("this server runs without a model catalog")
    return models


async def _body(request: Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await read_body(request, _BODY_LIMIT))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise InvalidParams(f"invalid request body: {problems}") from exc


def wire_model(entry: ModelEntry | None, progress: PullProgress | None) -> CatalogModel:
    """The wire shape of an entry, with the latest pull's progress when there is one."""
    pull = PullStatus(**progress.snapshot()) if progress is not None else None
    if entry is None:
        assert progress is not None
        return CatalogModel(id=progress.model_id, state="Pulling", pull=pull)
    manifests = [
        Manifest(digest=f"sha256:{f.sha256}", size_bytes=f.size_bytes) for f in entry.files
    ]
    if not manifests and entry.digest:
        manifests = [Manifest(digest=entry.digest, size_bytes=entry.size_bytes)]
    verification: Any = entry.verification
    return CatalogModel(
        id=entry.id,
        digest=entry.digest,
        source_url=entry.ref,
        state=entry.lifecycle.value,
        local_path=entry.local_path,
        size_bytes=entry.size_bytes,
        verification=verification,
        last_verified_ms=entry.last_verified_ms,
        source=entry.source,
        manifests=manifests,
        gguf=entry.gguf.model_dump(exclude_none=True) if entry.gguf else None,
        pull=pull,
    )


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = model.model_dump_json(exclude_none=True).encode()
    return Response(body, status, headers, media_type="application/json")


async def pull_model(request: Request) -> Response:
    """Register a local model (201) or start pulling a remote one (202 + progress location)."""
    models = _provisioner(request)
    body: PullRequest = await _body(request, PullRequest)
    settings = deps_of(request).settings
    ref = parse_ref(body.ref, base_dir=str(settings.base_dir))
    ref = check_local_root(ref, settings.config.catalog.local_roots, settings.base_dir)
    digest = parse_digest(body.digest) if body.digest else None
    model_id = ref_id(ref)
    models.precheck(ref)
    location = f"/v1/catalog/models/{model_id}"
    if models.store.locate(ref) is not None or models.is_local(ref):
        entry = await asyncio.to_thread(models.ensure_present, ref, digest)
        return _json(wire_model(entry, None), 201, {"Location": location})
    models.start_pull(ref, digest)
    accepted = Accepted(status="started", id=model_id, location=location)
    return _json(accepted, 202, {"Location": location})


def _cursor(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return base64.urlsafe_b64decode(text.encode() + b"==").decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidParams("cursor is not one this server issued; start without it") from exc


async def list_models(request: Request) -> Response:
    """One page of the catalog by id, with an ETag for If-None-Match."""
    models = _provisioner(request)
    try:
        limit = int(request.query_params.get("limit", DEFAULT_PAGE))
    except ValueError as exc:
        raise InvalidParams("limit is an integer from 1 to 1000") from exc
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidParams("limit is an integer from 1 to 1000")
    after = _cursor(request.query_params.get("cursor"))
    entries = [e for e in models.store.list() if after is None or e.id > after]
    page = entries[:limit]
    next_cursor = None
    if len(entries) > limit:
        next_cursor = base64.urlsafe_b64encode(page[-1].id.encode()).decode().rstrip("=")
    listing = CatalogModelList(
        models=[wire_model(e, models.progress.get(e.id)) for e in page], next_cursor=next_cursor
    )
    body = listing.model_dump_json(exclude_none=True).encode()
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, 200, {"ETag": etag}, media_type="application/json")


def _model_id(request: Request) -> str:
    return str(request.path_params["model_id"])


def _existing(models: ModelProvisioner, model_id: str) -> ModelEntry:
    entry = models.store.get(model_id)
    if entry is None:
        raise NotFound(f"model {model_id!r} is not in the catalog; see GET /v1/catalog/models")
    return entry


async def get_model(request: Request) -> Response:
    models = _provisioner(request)
    model_id = _model_id(request)
    entry = models.store.get(model_id)
    progress = models.progress.get(model_id)
    if entry is None and progress is None:
        raise NotFound(f"model {model_id!r} is not in the catalog; see GET /v1/catalog/models")
    return _json(wire_model(entry, progress))


async def verify_model(request: Request) -> Response:
    """Re-hash in the background; the result shows on GET as ``verification``."""
    models = _provisioner(request)
    model_id = _existing(models, _model_id(request)).id
    models.start_verify(model_id)
    return _json(Accepted(status="started", id=model_id), 202)


async def set_model_state(request: Request) -> Response:
    models = _provisioner(request)
    model_id = _existing(models, _model_id(request)).id
    body: StateRequest = await _body(request, StateRequest)
    state = Lifecycle(body.state)
    await asyncio.to_thread(models.set_state, model_id, state)
    if state is Lifecycle.RETIRED:
        _drain_retired(request, models, model_id, body.deadline_ms)
    return _json(Accepted(status="accepted", id=model_id), 202)


def _drain_retired(
    request: Request, models: ModelProvisioner, model_id: str, deadline_ms: int | None
) -> None:
    """The pools serving a retired model drain: their queued tasks end at once with
    MODEL_DEPRECATED; running ones finish, or stop at ``deadline_ms`` if it is given and the
    model is still retired then."""
    deps = deps_of(request)
    pool_models = deps.pools.models
    service = deps.service

    def end_queued(pool_id: str, why: str) -> int:
        error = ModelDeprecated(
            f"{why} while this task waited; it was not started: send it to another model, or "
            f"activate the model again (llorch models activate {model_id})",
            pool_id=pool_id,
        )
        return service.end_queued(pool_id, error)

    async def still_retired() -> bool:
        entry = await asyncio.to_thread(models.store.get, model_id)
        return entry is not None and entry.lifecycle is Lifecycle.RETIRED

    # Running tasks stop as a drain stops them; only the queued ones end with another error.
    control = dataclasses.replace(task_control(service), end_queued=end_queued)
    for pool_id in pool_models.serving_now(model_id) if pool_models is not None else []:
        deps.pools.lifecycle.retire(
            pool_id, f"model {model_id} was retired", deadline_ms, control, still_retired
        )


async def delete_model(request: Request) -> Response:
    models = _provisioner(request)
    model_id = _model_id(request)
    pool_models = deps_of(request).pools.models
    users = pool_models.serving(model_id) if pool_models is not None else []
    if users:
        # Deleting it would turn those pools Unready and restart their engines until the
        # model came back; the operator moves them off it first.
        raise Conflict(
            f"model {model_id} is in use by pool {', '.join(users)} (served, or the target of "
            f"a running reload); reload {'it' if len(users) == 1 else 'them'} to another model "
            f"first (POST /v1/pools/{users[0]}/reload), then delete it",
            pool_id=users[0],
        )
    progress = models.progress.get(model_id)
    if progress is not None and progress.state is PullState.RUNNING:
        # The pull would register the model again right after the delete; a running pull has
        # no cancel route, so the caller waits for it.
        raise Conflict(
            f"model {model_id} is being pulled; a running pull cannot be cancelled, so wait "
            f"for it to end (GET /v1/catalog/models/{model_id} shows its progress), then "
            "delete the model"
        )
    outcome = await asyncio.to_thread(models.delete, model_id)
    if not outcome.found:
        raise NotFound(f"model {model_id!r} is not in the catalog; see GET /v1/catalog/models")
    if outcome.problem:
        narrate("catalog", "delete", model_id, f"Deletes {model_id}: {outcome.problem}.")
    return Response(status_code=204)


async def models_collection(request: Request) -> Response:
    """One route for both methods, so a 405 lists both in ``Allow``."""
    if request.method == "POST":
        return await pull_model(request)
    return await list_models(request)


async def model_resource(request: Request) -> Response:
    """One route for both methods, so a 405 lists both in ``Allow``."""
    if request.method == "DELETE":
        return await delete_model(request)
    return await get_model(request)


routes = [
    Route("/v1/catalog/models", models_collection, methods=["GET", "POST"]),
    Route("/v1/catalog/models/{model_id:path}/verify", verify_model, methods=["POST"]),
    Route("/v1/catalog/models/{model_id:path}/state", set_model_state, methods=["POST"]),
    Route("/v1/catalog/models/{model_id:path}", model_resource, methods=["GET", "DELETE"]),
]
