"""``llorch serve``: load settings, build the app, serve it with granian in the foreground.

granian speaks HTTP/1.1 and HTTP/2 on the same port: cleartext HTTP/2 with prior knowledge, and
ALPN ``h2`` when ``server.tls`` is configured (OC-CTRL-2025). It runs embedded in this process's
event loop, so the server, dispatcher and pool manager share one process (SPEC §2.1). Why
granian and not uvicorn or hypercorn is measured in docs/streaming.md.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server.embed import Server

from llama_orch.auth.tokens import token_identity
from llama_orch.bootstrap import build_deps
from llama_orch.config import Settings, load_settings
from llama_orch.observability.logging import configure_logging
from llama_orch.observability.narration import narrate
from llama_orch.server.app import create_app, redactor_of
from llama_orch.server.deps import AppDeps

#: After SIGINT/SIGTERM every stream is ended at once; the process exits within this many
#: seconds even if a connection or a background job does not let go.
SHUTDOWN_DEADLINE_S = 15.0
# Connections queued by the kernel, and requests served at once: 1,000 open streams must fit.
_BACKLOG = 2048
_MAX_IN_FLIGHT = 8192
# granian's own logger only reports errors, through our handlers; its access log stays off.
_GRANIAN_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {},
    "loggers": {
        "_granian": {"level": "ERROR", "propagate": True},
        "granian.access": {"level": "CRITICAL", "propagate": False},
    },
}


def run_server(
    config_path: str,
    environ: Mapping[str, str],
    bind: str | None = None,
    *,
    log_format: str | None = None,
) -> None:
    """Serve in the foreground; ``log_format`` (the --log-format flag) beats LOG_FORMAT."""
    if log_format is not None:
        environ = {**environ, "LOG_FORMAT": log_format}
    settings = load_settings(environ, config_path, bind_override=bind)
    configure_logging(
        "pretty" if settings.log_format == "pretty" else "json",
        settings.config.logging.level,
        redactor=redactor_of(settings),
    )
    deps = build_deps(settings)
    inventory = deps.pools.inventory
    log = structlog.get_logger("llama_orch")
    if inventory.simulated or any(p.simulated for p in deps.pools.pools.values()):
        log.warning(
            "simulated",
            actor="server",
            action="start",
            target="gpus",
            simulated=True,
            human="Runs on a simulated GPU inventory or mock engine: no real inference here.",
            gpus=[f"{g.index}:{g.name}:{g.vram_total_bytes // 2**20}MiB" for g in inventory.gpus],
        )
    if settings.auth_token is None:
        narrate(
            "server",
            "auth-mode",
            "auth",
            "Serves loopback callers without a token; set AUTH_TOKEN to require one.",
            level="warning",
            auth="open-loopback",
        )
    else:
        narrate(
            "server",
            "auth-mode",
            "auth",
            "Requires the bearer token"
            + (", except from loopback callers." if settings.auth_optional else " from everyone.")
            + (" Trusts X-Forwarded-For from the proxy." if settings.trust_proxy_auth else ""),
            auth="optional-loopback" if settings.auth_optional else "token",
            identity=token_identity(settings.auth_token),
            trust_proxy_auth=settings.trust_proxy_auth,
        )
    scheme = "https" if settings.config.server.tls is not None else "http"
    narrate(
        "server",
        "start",
        f"{settings.host}:{settings.port}",
        f"Serves {_count(len(settings.config.pools), 'pool')} on "
        f"{scheme}://{settings.host}:{settings.port} over HTTP/1.1 and HTTP/2.",
        config=settings.source,
        pools=[p.id for p in settings.config.pools],
    )
    app = create_app(deps)
    # Everything built so far (modules, config, the app) lives as long as the process: moved
    # out of the collector's reach, it is not rescanned by every full collection while streams
    # run (~66k objects, which made the first one take tens of milliseconds).
    gc.collect()
    gc.freeze()
    serve_app(app, settings, on_stop=lambda: _end_streams(deps))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _end_streams(deps: AppDeps) -> None:
    """End every open stream with its terminal frame, so the server can close its connections.

    granian stops only once its connections are closed, and runs the app's lifespan shutdown
    only after that; an SSE stream left open would hold the process for as long as it runs.
    """
    deps.service.shutdown()


def serve_app(app: Any, settings: Settings, *, on_stop: Callable[[], None] | None = None) -> None:
    """Run ``app`` until SIGINT or SIGTERM; the app's lifespan starts and stops the rest."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(app, settings, on_stop))


async def _serve(app: Any, settings: Settings, on_stop: Callable[[], None] | None) -> None:
    tls = settings.config.server.tls
    server = Server(
        app,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        http=HTTPModes.auto,
        websockets=False,
        backlog=_BACKLOG,
        backpressure=_MAX_IN_FLIGHT,
        log_level=LogLevels.error,
        log_dictconfig=_GRANIAN_LOGGING,
        ssl_cert=_resolve(tls.certfile, settings) if tls else None,
        ssl_key=_resolve(tls.keyfile, settings) if tls else None,
    )
    loop = asyncio.get_running_loop()
    stop_server: Callable[[], None] = server.stop  # granian's own method is untyped
    serving = asyncio.ensure_future(server.serve())
    forced: list[bool] = []

    def force() -> None:
        if not serving.done():
            forced.append(True)
            serving.cancel()

    def stop() -> None:
        if on_stop is not None:
            on_stop()
        stop_server()
        # Streams were just ended; whatever still holds the server past the deadline is cut.
        loop.call_later(SHUTDOWN_DEADLINE_S, force)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await serving
    except asyncio.CancelledError:
        if not forced:
            raise
        narrate(
            "server",
            "stop",
            f"{settings.host}:{settings.port}",
            f"Stops after the {SHUTDOWN_DEADLINE_S:g} s shutdown deadline; open work is cut.",
            level="warning",
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _resolve(path: str, settings: Settings) -> Path:
    """Relative certificate paths resolve against the config file's directory."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else settings.base_dir / candidate


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (it is, with uvicorn[standard]): cheaper wake-ups per token."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with the pinned dependencies
        return None
    return uvloop.new_event_loop
