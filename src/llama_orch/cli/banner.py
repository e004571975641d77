"""The few lines ``llorch serve`` prints for a person at a terminal once it is set up."""

from __future__ import annotations

import os

from llama_orch.config import Settings


def command_name(argv0: str) -> str:
    """How the person who started the server runs ``llorch`` from here (``.venv/bin/llorch``
    after ``make run``), else plain ``llorch``."""
    if os.path.basename(argv0) != "llorch":
        return "llorch"
    relative = os.path.relpath(argv0)
    return "llorch" if relative.startswith("..") or os.path.isabs(relative) else relative


def console_url(settings: Settings) -> str:
    """Where a browser on this machine finds the console (a wildcard bind is reached on
    loopback)."""
    scheme = "https" if settings.config.server.tls is not None else "http"
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"{scheme}://{url_host(host)}:{settings.port}/"


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def start_banner(
    settings: Settings, *, version: str, simulated: bool, command: str = "llorch"
) -> str:
    pools = settings.config.pools
    url = console_url(settings)
    env = "" if url == "http://127.0.0.1:8080/" else f"LLORCH_URL={url.rstrip('/')} "
    parts = [f"{len(pools)} pool{'s' if len(pools) != 1 else ''}"]
    if simulated:
        parts.append("simulated GPUs, no real inference")
    if settings.auth_token is not None:
        parts.append("bearer token required")
    return "\n".join(
        [
            "",
            f"  llama-orch {version} · " + " · ".join(parts),
            f"  Console  {url}",
            f"  Try      {env}{command} status --watch",
            f'           {env}{command} submit "Write a haiku about GPUs"',
            "",
        ]
    )
