"""Pool control: ``POST /v1/pools/{id}/drain`` and ``POST /v1/pools/{id}/reload`` (202), and
the launched-engine fields of pool health. The pool lifecycle does the work; this module parses,
hands it the task service's controls, and answers."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.catalog.refs import FileRef, parse_ref
from llama_orch.catalog.roots import check_local_root
from llama_orch.config import Settings
from llama_orch.contracts.api import DrainRequest, ReloadRequest
from llama_orch.dispatch.service import TaskService
from llama_orch.errors import InvalidModelRef, InvalidParams, NotFound, PoolUnavailable
from llama_orch.pool.engine_process import is_launched
from llama_orch.pool.lifecycle import TaskControl
from llama_orch.pool.manager import PoolManager
from llama_orch.server.body import read_body
from llama_orch.server.deps import deps_of

#: Retry advice for tasks a drain turns away: long enough for a reload to finish.
DRAIN_RETRY_AFTER_MS = 5000
#: A drain or reload body is a few fields.
_BODY_LIMIT = 65_536


def launched_health(pools: PoolManager, pool_id: str) -> dict[str, Any]:
    """Health fields of a pool whose engines llama-orch launches (empty for the others)."""
    pool = pools.pools[pool_id]
    processes = [r.process for r in pool.replicas if r.process is not None]
    op = pools.lifecycle.latest.get(pool_id)
    fields: dict[str, Any] = {"last_operation": op.as_dict() if op else None}
    if processes:
        prepared = next((p.prepared for p in processes if p.prepared), None)
        fields["restart_count"] = sum(p.restarts for p in processes)
        if prepared is not None:
            fields["engine_digest"] = prepared.engine_digest
            fields["provisioning_mode"] = prepared.provisioning_mode
    return fields


def task_control(service: TaskService) -> TaskControl:
    def end_queued(pool_id: str, why: str) -> int:
        error = PoolUnavailable(
            f"{why}; the task was not started, resubmit it (to another pool, or after the "
            "drain or reload)",
            retry_after_ms=DRAIN_RETRY_AFTER_MS,
            pool_id=pool_id,
        )
        return service.end_queued(pool_id, error)

    def stop_running(pool_id: str, replica_ids: set[str]) -> int:
        return service.stop_running(pool_id, replica_ids, reason="drain")

    return TaskControl(end_queued=end_queued, stop_running=stop_running)


async def _body(request: Request, model: type[DrainRequest] | type[ReloadRequest]) -> Any:
    try:
        return model.model_validate_json(await read_body(request, _BODY_LIMIT))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidParams(f"{where}: {first['msg']}") from exc


def _pool_id(request: Request) -> str:
    pool_id: str = request.path_params["pool_id"]
    if pool_id not in deps_of(request).pools.pools:
        raise NotFound(f"pool {pool_id!r} is not configured; see GET /v1/capabilities")
    return pool_id


def _accepted(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), 202, media_type="application/json")


async def drain(request: Request) -> Response:
    pool_id = _pool_id(request)
    body: DrainRequest = await _body(request, DrainRequest)
    deps = deps_of(request)
    op = deps.pools.lifecycle.drain(pool_id, body.deadline_ms, task_control(deps.service))
    return _accepted({"pool_id": pool_id, "draining": True, **op.as_dict()})


async def reload(request: Request) -> Response:
    pool_id = _pool_id(request)
    body: ReloadRequest = await _body(request, ReloadRequest)
    deps = deps_of(request)
    within = None
    if is_launched(deps.pools.pools[pool_id].config):
        # Other pools' reloads are refused as such; a plain name is no path to them.
        within = _check_local(body.new_model_ref, deps.settings)
    control = task_control(deps.service)
    op = await deps.pools.lifecycle.reload(pool_id, body.new_model_ref, control, within)
    return _accepted({"pool_id": pool_id, **op.as_dict()})


def _check_local(model_ref: str, settings: Settings) -> tuple[str, ...] | None:
    """A reload's model is the caller's choice, not the config's: a local one is bounded by
    catalog.local_roots as a pull's is (a launched engine takes any other string as a path).
    Returns the roots' real folders, for the check on the files when they are opened."""
    try:
        ref = parse_ref(model_ref, base_dir=str(settings.base_dir))
    except InvalidModelRef:
        return None  # the reload itself says what is wrong with it
    bounded = check_local_root(ref, settings.config.catalog.local_roots, settings.base_dir)
    return bounded.within if isinstance(bounded, FileRef) else None


routes = [
    Route("/v1/pools/{pool_id}/drain", drain, methods=["POST"]),
    Route("/v1/pools/{pool_id}/reload", reload, methods=["POST"]),
]
