"""``llorch serve``: load settings, build the app, serve it with granian in the foreground.

granian speaks HTTP/1.1 and HTTP/2 on the same port: cleartext HTTP/2 with prior knowledge, and
ALPN ``h2`` when ``server.tls`` is configured (OC-CTRL-2025). It runs embedded in this process's
event loop, so the server, dispatcher and pool manager share one process (SPEC §2.1). Why
granian and not uvicorn or hypercorn is measured in docs/streaming.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from granian._granian import SocketHolder
from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server.embed import Server

from llama_orch import __version__
from llama_orch.auth.tokens import token_identity
from llama_orch.bootstrap import build_deps, hold_engines_run_dir
from llama_orch.cli.banner import command_name, start_banner, url_host
from llama_orch.config import Settings, load_settings, resolve_path
from llama_orch.observability.logging import choose_log_format, configure_logging
from llama_orch.observability.metrics import Metrics
from llama_orch.observability.narration import narrate
from llama_orch.server.app import create_app, redactor_of
from llama_orch.server.connections import ConnectionWatch
from llama_orch.server.console import StatusFeed
from llama_orch.server.deps import AppDeps
from llama_orch.server.listener import (
    bind_listener,
    connection_cap,
    engine_fds,
    raise_fd_limit,
)

#: After SIGINT/SIGTERM/SIGHUP every stream is ended at once; the process exits within this many
#: seconds even if a connection or a background job does not let go.
SHUTDOWN_DEADLINE_S = 15.0
# Connections queued by the kernel while the server holds its cap of connections.
_BACKLOG = 2048
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
    explicit = "LOG_FORMAT" in environ or "format" in settings.config.logging.model_fields_set
    fmt = choose_log_format(settings.log_format, explicit=explicit, tty=sys.stderr.isatty())
    configure_logging(fmt, settings.config.logging.level, redactor=redactor_of(settings))
    # Bound before anything else starts, so a port in use stops start-up with nothing to undo.
    listener = bind_listener(
        settings.host, settings.port, _BACKLOG, reuse_port=settings.config.server.reuse_port
    )
    # Port 0 asks the kernel for a free one: from here on the port is the one it gave, so the
    # start line and the banner name where the server can be reached.
    settings = dataclasses.replace(settings, port=int(listener.getsockname()[1]))
    # Held until the process exits: the engines' pid files under the run dir are this server's.
    run_lock = hold_engines_run_dir(settings)
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
        f"{scheme}://{url_host(settings.host)}:{settings.port} over HTTP/1.1 and HTTP/2.",
        config=settings.source,
        pools=[p.id for p in settings.config.pools],
    )
    if fmt == "pretty" and sys.stderr.isatty():
        simulated = inventory.simulated or any(p.simulated for p in deps.pools.pools.values())
        banner = start_banner(
            settings,
            version=__version__,
            simulated=simulated,
            command=command_name(sys.argv[0]),
        )
        print(banner, file=sys.stderr)
    app = create_app(deps)
    # Everything built so far (modules, config, the app) lives as long as the process: moved
    # out of the collector's reach, it is not rescanned by every full collection while streams
    # run (~66k objects, which made the first one take tens of milliseconds).
    gc.collect()
    gc.freeze()
    try:
        serve_app(
            app,
            settings,
            listener,
            metrics=deps.metrics,
            on_stop=lambda: _end_streams(deps, app.state.console_feed),
        )
    finally:
        if run_lock is not None:
            os.close(run_lock)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _end_streams(deps: AppDeps, feed: StatusFeed) -> None:
    """End every open stream with its terminal frame, so the server can close its connections.

    granian stops only once its connections are closed, and runs the app's lifespan shutdown
    only after that; an SSE stream left open would hold the process for as long as it runs.
    """
    deps.service.shutdown()
    feed.close()
    if deps.models is not None:
        # A local model being hashed for a request would hold that request, and the exit.
        deps.models.stopping.set()


class _BoundServer(Server):
    """granian's embedded server on a socket bound by ``bind_listener``, not by granian."""

    def __init__(self, app: Any, listener: socket.socket, **options: Any) -> None:
        self._listener = listener
        super().__init__(app, **options)

    def _init_shared_socket(self) -> None:
        # The listener's descriptor becomes granian's: it closes it when its worker stops.
        # (granian's stub leaves out the holder's constructor, and types the slot as None.)
        self._ssp = None
        self._shd = SocketHolder(self._listener.detach(), False, _BACKLOG)  # type: ignore[call-arg,assignment]


def serve_app(
    app: Any,
    settings: Settings,
    listener: socket.socket,
    *,
    metrics: Metrics,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Run ``app`` until SIGINT, SIGTERM or SIGHUP; the app's lifespan starts and stops the
    rest."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(app, settings, listener, metrics, on_stop))


async def _serve(
    app: Any,
    settings: Settings,
    listener: socket.socket,
    metrics: Metrics,
    on_stop: Callable[[], None] | None,
) -> None:
    tls = settings.config.server.tls
    limits = settings.config.server.connections
    fd_limit = raise_fd_limit()
    cap = connection_cap(limits.max, fd_limit, engine_fds(settings.config.pools))
    port = int(listener.getsockname()[1])
    metrics.server_connections_max.set(cap)
    narrate(
        "server",
        "connection-limits",
        f"port {port}",
        f"Serves up to {cap} connections at once (open-file limit {fd_limit}); closes "
        f"connections silent for {limits.first_byte_timeout_ms} ms and request bodies slower "
        f"than {limits.body_timeout_ms} ms.",
        cap=cap,
        fd_limit=fd_limit,
    )
    watch = ConnectionWatch(
        port,
        cap,
        limits.first_byte_timeout_ms,
        open_gauge=metrics.server_connections_open,
        closed_silent=metrics.server_connections_closed_silent_total,
        cap_reached=metrics.server_connection_cap_reached_total,
    )
    server = _BoundServer(
        app,
        listener,
        address=settings.host,
        port=port,
        interface=Interfaces.ASGI,
        http=HTTPModes.auto,
        websockets=False,
        backlog=_BACKLOG,
        # granian takes one permit per accepted connection, before accepting it: the permits
        # are the connection cap, and keep its accept loop out of an exhausted fd table.
        backpressure=cap,
        log_level=LogLevels.error,
        log_dictconfig=_GRANIAN_LOGGING,
        ssl_cert=resolve_path(tls.certfile, settings.base_dir) if tls else None,
        ssl_key=resolve_path(tls.keyfile, settings.base_dir) if tls else None,
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

    signals = _stop_signals()
    for sig in signals:
        loop.add_signal_handler(sig, stop)
    watch.start()
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
        await watch.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)


def _stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop the server cleanly. SIGHUP is the terminal (or SSH session) going
    away: its default action would end the process at once, leaving the engines it launched
    running. Under ``nohup`` (SIGHUP ignored) the server outlives its terminal, as asked."""
    hangup = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hangup)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (it is, with uvicorn[standard]): cheaper wake-ups per token."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with the pinned dependencies
        return None
    return uvloop.new_event_loop
