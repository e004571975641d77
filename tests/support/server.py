"""A real llama-orch server on an ephemeral loopback port, inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import uvicorn
import yaml
from starlette.applications import Starlette

from llama_orch.bootstrap import build_deps
from llama_orch.config import Config, load_settings
from llama_orch.dispatch.service import TaskService
from llama_orch.errors import NotFound
from llama_orch.observability.logging import configure_logging
from llama_orch.server.app import create_app, redactor_of
from llama_orch.server.deps import AppDeps
from tests.support.log_scan import LOG_SCAN, secrets_of

SIMULATED_GPUS = {
    "simulated": [
        {"index": 0, "name": "RTX 3090 (simulated)", "vram_mb": 24576},
        {"index": 1, "name": "RTX 3060 (simulated)", "vram_mb": 12288},
    ]
}


def mock_pool(pool_id: str = "p0", model: str = "m0", **overrides: Any) -> dict[str, Any]:
    """A fast mock pool; ``mock=`` merges into the default pace."""
    mock = {"ttft_ms": 5, "tokens_per_s": 500.0, **overrides.pop("mock", {})}
    return {
        "id": pool_id,
        "engine": "mock",
        "model": model,
        "ctx": 4096,
        "devices": [0],
        "slots": 1,
        "mock": mock,
        **overrides,
    }


#: Where test servers keep artifacts and stream traces, unless a test names its own directory.
#: How long a stopping test server may take: its lifespan stops pools and engines (each within
#: its own deadline); beyond this a response is holding a connection open.
STOP_S = 25.0
ARTIFACTS_DIR = str(Path(tempfile.gettempdir()) / f"llorch-test-artifacts-{os.getpid()}")


def config_of(*pools: dict[str, Any], **top: Any) -> Config:
    server = {"artifacts_dir": ARTIFACTS_DIR, **top.pop("server", {})}
    raw = {"gpus": SIMULATED_GPUS, "pools": list(pools) or [mock_pool()], "server": server, **top}
    return Config.model_validate(raw)


def task_body(model: str = "m0", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "session_id": str(uuid.uuid4()),
        "workload": "completion",
        "model_ref": model,
        "engine": "mock",
        "ctx": 2048,
        "priority": "interactive",
        "max_tokens": 16,
        "deadline_ms": 60_000,
        "prompt": "hello",
        "seed": 7,
    }
    body.update(overrides)
    return body


class LiveTask:
    """A task as ``TaskService`` reports it, read afresh on every attribute access."""

    def __init__(self, service: TaskService, task_id: str) -> None:
        self._service = service
        self._task_id = task_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service.task_status(self._task_id), name)

    def frames(self) -> list[tuple[str, bytes]]:
        return self._service.transcript(self._task_id)


@dataclass
class RunningServer:
    url: str
    deps: AppDeps
    client: httpx.AsyncClient
    app: Starlette | None = None

    def task(self, task_id: str) -> LiveTask | None:
        """The task through the service facade; None when it is unknown (or expired)."""
        try:
            self.deps.service.task_status(task_id)
        except NotFound:
            return None
        return LiveTask(self.deps.service, task_id)

    async def submit(self, body: dict[str, Any], **kw: Any) -> httpx.Response:
        return await self.client.post("/v1/tasks", json=body, **kw)

    async def stream(self, task_id: str, **kw: Any) -> list[tuple[str, dict[str, Any]]]:
        """Read a whole SSE stream into (event, payload) pairs."""
        frames: list[tuple[str, dict[str, Any]]] = []
        async for event, data in sse_events(self.client, task_id, **kw):
            frames.append((event, data))
        return frames


async def sse_events(
    client: httpx.AsyncClient, task_id: str, **kw: Any
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    import orjson
    from httpx_sse import aconnect_sse

    async with aconnect_sse(client, "GET", f"/v1/tasks/{task_id}/stream", **kw) as source:
        source.response.raise_for_status()
        async for sse in source.aiter_sse():
            yield sse.event, orjson.loads(sse.data)


@contextlib.asynccontextmanager
async def running_server(
    config: Config,
    environ: Mapping[str, str] | None = None,
    *,
    host: str = "127.0.0.1",
    client_headers: Mapping[str, str] | None = None,
    log_stream: TextIO | None = None,
    **deps_options: Any,
) -> AsyncIterator[RunningServer]:
    """Serve ``config`` with ``environ`` as the server's environment (AUTH_TOKEN, ...).

    With ``log_stream``, logs are configured as ``llorch serve`` does (JSON Lines, redaction at
    the sink) and written there.
    """
    settings = load_settings(environ or {}, config=config, bind_override=f"{host}:0")
    if log_stream is not None:
        fmt = "pretty" if settings.log_format == "pretty" else "json"
        configure_logging(fmt, redactor=redactor_of(settings), stream=log_stream)
    deps = build_deps(settings, probe_interval_s=0.2, **deps_options)
    app = create_app(deps)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=0,
            log_config=None,
            access_log=False,
            lifespan="on",
            # uvicorn would rewrite the client address from X-Forwarded-For sent by a loopback
            # peer; only the auth policy may decide that (TRUST_PROXY_AUTH, D-AUTH-01).
            proxy_headers=False,
        )
    )
    serve = asyncio.create_task(server.serve())
    while not server.started:
        if serve.done():
            serve.result()
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://{host}:{port}"
    async with httpx.AsyncClient(
        base_url=url, headers=dict(client_headers or {}), timeout=httpx.Timeout(10.0)
    ) as client:
        try:
            yield RunningServer(url, deps, client, app)
        finally:
            server.should_exit = True
            await _stopped(server, serve)
    if isinstance(log_stream, io.StringIO):
        secrets = secrets_of(config.model_dump(mode="json"), environ)
        LOG_SCAN.check("in-process server", log_stream.getvalue().splitlines(), secrets)


async def _stopped(server: uvicorn.Server, serve: asyncio.Task[None]) -> None:
    """Wait for the server to stop; a response that never ends fails the test by name instead
    of holding it until pytest's own timeout."""
    try:
        async with asyncio.timeout(STOP_S):
            await asyncio.shield(serve)
    except TimeoutError:
        open_now = len(server.server_state.connections)
        serve.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serve
        raise AssertionError(
            f"the server did not stop within {STOP_S:.0f} s: {open_now} connection(s) still "
            "open, a response that never ends"
        ) from None


def yaml_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)
