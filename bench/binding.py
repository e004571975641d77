"""Server binding cost per streamed frame: granian ASGI, granian RSGI and uvicorn, same app.

``python -m bench binding``. Each server runs ``bench/_binding_app.py`` in its own process (one
worker, uvloop) and streams 128 SSE frames 5 ms apart (the ``bench cpu`` c=64 pace) to 64
closed-loop clients, then 256 frames unpaced to 32. The app does nothing but pace and send,
so the server process's CPU per response is what the binding itself costs: the floor under
any Python server that streams through it. Servers run interleaved round by round.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.streaming import LeanHttp1, Proc, Row, loop_runner, n, table

SERVERS: dict[str, list[str]] = {
    "granian/asgi": ["-m", "granian", "--interface", "asgi", "--loop", "uvloop"],
    "granian/rsgi": ["-m", "granian", "--interface", "rsgi", "--loop", "uvloop"],
    "uvicorn": ["-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log"],
}
TARGETS = {"granian/asgi": "bench._binding_app:asgi", "granian/rsgi": "bench._binding_app:rsgi"}


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(name: str) -> Proc:
    port = _free_port()
    command = [sys.executable, *SERVERS[name]]
    if name == "uvicorn":
        command += ["--port", str(port), "--log-level", "warning", "bench._binding_app:asgi"]
    else:
        command += ["--port", str(port), "--log-level", "warning", TARGETS[name]]
    root = str(Path(__file__).resolve().parent.parent)
    popen = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"{url}/?n=1&ms=0", timeout=1)
            return Proc(url, popen)
        time.sleep(0.1)
    popen.kill()
    raise RuntimeError(f"{name} did not start")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(proc: Proc) -> float:
    """granian runs its worker as a child process: the whole tree counts."""
    total = proc.cpu_s()
    for task in Path(f"/proc/{proc.popen.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                total += _cpu_s(int(pid))
    return total


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def _window(
    proc: Proc, clients: int, frames: int, ms: int, seconds: float
) -> tuple[int, float, float]:
    http = LeanHttp1(proc.url)
    done = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while True:
            async with http.stream("GET", f"/?n={frames}&ms={ms}") as chunks:
                async for _ in chunks:
                    pass
            done += 1
            if time.perf_counter() >= stop_at:
                return

    cpu0, start = _tree_cpu_s(proc), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    await http.aclose()
    return done, _tree_cpu_s(proc) - cpu0, wall


async def _scenario(
    procs: dict[str, Proc], clients: int, frames: int, ms: int, seconds: float
) -> list[Row]:
    totals: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in procs}
    for _ in range(max(2, n(3))):
        for name, proc in procs.items():
            done, cpu, wall = await _window(proc, clients, frames, ms, seconds)
            totals[name][0] += done
            totals[name][1] += cpu
            totals[name][2] += wall
    return [
        {
            "server": name,
            "responses": f"{int(done)}",
            "frames/s": f"{done * frames / wall:,.0f}",
            "server CPU ms/response": f"{cpu / max(1, done) * 1000:.2f}",
            "µs/frame": f"{cpu / max(1, done * frames) * 1e6:.1f}",
        }
        for name, (done, cpu, wall) in totals.items()
    ]


async def run() -> None:
    procs: dict[str, Proc] = {}
    try:
        for name in SERVERS:
            procs[name] = _start(name)
        load = _load()
        scenarios: list[tuple[str, int, int, int, float]] = [
            ("64 closed-loop clients x 128 frames, 5 ms apart", 64, 128, 5, 3.0),
            ("32 closed-loop clients x 256 frames, unpaced", 32, 256, 0, 2.0),
        ]
        for title, clients, frames, ms, seconds in scenarios:
            rows = await _scenario(procs, clients, frames, ms, seconds)
            print(f"### {title}\n\n{table(rows)}", flush=True)
        print(f"(load average before {load})")
    finally:
        for proc in procs.values():
            proc.popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=10)


def main() -> None:
    runner = loop_runner()
    print(f"scale {os.environ.get('BENCH_SCALE', '1.0')}; cpus {os.cpu_count()}", flush=True)
    runner(run())
