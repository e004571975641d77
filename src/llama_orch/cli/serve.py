"""``llorch serve``: load settings, build the app, run uvicorn in the foreground."""

from __future__ import annotations

from collections.abc import Mapping

import structlog
import uvicorn

from llama_orch.auth.tokens import token_identity
from llama_orch.bootstrap import build_deps
from llama_orch.config import load_settings
from llama_orch.observability.logging import configure_logging
from llama_orch.observability.narration import narrate
from llama_orch.server.app import create_app, redactor_of


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
    narrate(
        "server",
        "start",
        f"{settings.host}:{settings.port}",
        f"Serves {len(settings.config.pools)} pools on http://{settings.host}:{settings.port}.",
        config=settings.source,
        pools=[p.id for p in settings.config.pools],
    )
    app = create_app(deps)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
