"""``llorch serve`` as a real subprocess on a free loopback port (the production server stack)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.log_scan import LOG_SCAN, secrets_of


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ServeProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@contextlib.contextmanager
def serve_process(
    config: Mapping[str, Any],
    workdir: Path,
    *,
    environ: Mapping[str, str] | None = None,
    scheme: str = "http",
    start_timeout_s: float = 20.0,
    preexec_fn: Callable[[], None] | None = None,
    port: int | None = None,
) -> Iterator[ServeProcess]:
    """Start ``llorch serve`` on ``config`` (on ``port``, else a free one); stop it with SIGTERM
    (then SIGKILL) on exit.

    ``preexec_fn`` runs in the child before it starts (to lower its resource limits, say).
    """
    config_path = workdir / "llorch.yaml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    log_path = workdir / "serve.log"
    port = port or free_port()
    # The default model catalog follows XDG_CACHE_HOME: each server gets its own, never the
    # user's (tests that share one name it in the config or in ``environ``).
    env = {**os.environ, "XDG_CACHE_HOME": str(workdir / "cache"), **(environ or {})}
    env.pop("AUTH_TOKEN", None)
    command = [sys.executable, "-m", "llama_orch", "serve", "--config", str(config_path)]
    command += ["--bind", f"127.0.0.1:{port}"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec_fn
        )
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log_path, start_timeout_s)
        yield ServeProcess(url, process, log_path)
    finally:
        stop(process)
    LOG_SCAN.check_file(log_path, secrets_of(config, env))


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_ready(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, verify=False, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"llorch serve exited: {log_path.read_text()[-2000:]}")
            try:
                # 401: up, and requiring a token the readiness probe does not send.
                if client.get("/v1/capabilities").status_code in (200, 401):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"llorch serve did not start in {timeout_s} s")
