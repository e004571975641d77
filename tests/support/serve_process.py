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

#: Starts tried on another free port when the one chosen was taken meanwhile.
PORT_TRIES = 3


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
    # The default model catalog follows XDG_CACHE_HOME: each server gets its own, never the
    # user's (tests that share one name it in the config or in ``environ``).
    env = {**os.environ, "XDG_CACHE_HOME": str(workdir / "cache"), **(environ or {})}
    env.pop("AUTH_TOKEN", None)
    # A free port is free only until someone binds it: another test's server may be handed
    # the same one first. Such a start is tried again on another port (a port the test chose
    # is its own business).
    for attempt in range(1 if port else PORT_TRIES):
        chosen = port or free_port()
        command = [sys.executable, "-m", "llama_orch", "serve", "--config", str(config_path)]
        command += ["--bind", f"127.0.0.1:{chosen}"]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec_fn
            )
        url = f"{scheme}://127.0.0.1:{chosen}"
        try:
            _wait_ready(url, chosen, process, log_path, start_timeout_s)
        except PortTaken:
            stop(process)
            if port or attempt == PORT_TRIES - 1:
                raise
            continue
        except BaseException:
            stop(process)
            raise
        break
    try:
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


class PortTaken(RuntimeError):
    """Another process listens on the port the server was started on."""


def _wait_ready(
    url: str, port: int, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    """Until the server answers on ``url`` from a socket it holds itself: an answer from
    another process that was handed the same port is not this server's."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, verify=False, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                text = log_path.read_text(errors="replace")
                if "address already in use" in text:
                    raise PortTaken(f"port {port} was taken: {text[-500:]}")
                raise RuntimeError(f"llorch serve exited: {text[-2000:]}")
            try:
                # 401: up, and requiring a token the readiness probe does not send.
                answered = client.get("/v1/capabilities").status_code in (200, 401)
            except httpx.TransportError:
                answered = False
            if answered and listens(process.pid, port):
                return
            time.sleep(0.05)
    raise RuntimeError(f"llorch serve did not start in {timeout_s} s")


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on TCP ``port`` (Linux: the kernel's
    socket tables and the process's descriptors)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # fields: sl, local address (hex ip:port), remote, state (0A: LISTEN), ..., inode
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return True
    return False
