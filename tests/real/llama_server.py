"""A real ``llama-server`` as a subprocess on a free loopback port, launched for strict
determinism (one slot, no continuous batching, a fixed seed)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.serve_process import free_port, stop

#: The run's default RNG seed; tasks send their own, this only fixes requests without one.
SEED = 1234
#: One thread each: two servers share two cores with the orchestrator and the test.
THREADS = 1


def launch_command(binary: Path, model: Path, port: int, ctx: int) -> list[str]:
    return [
        str(binary),
        *("-m", str(model), "-a", "tiny"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("-c", str(ctx), "-t", str(THREADS), "-s", str(SEED)),
        *("--parallel", "1", "--no-cont-batching", "--metrics"),
    ]


@contextlib.contextmanager
def llama_server(binary: Path, model: Path, log_path: Path, *, ctx: int) -> Iterator[str]:
    """Start the server; yield its URL once ``/health`` answers 200; stop it on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            launch_command(binary, model, port, ctx),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_healthy(url, process, log_path)
            yield url
        finally:
            stop(process)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=url, timeout=5, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            with contextlib.suppress(httpx.TransportError):
                if client.get("/health").status_code == 200:
                    return
            time.sleep(0.05)
    tail = log_path.read_text(errors="replace").splitlines()[-20:]
    state = f"exited with {process.returncode}" if process.poll() is not None else "not healthy"
    raise AssertionError(f"llama-server {state} after launch:\n" + "\n".join(tail))
