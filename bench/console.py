"""Console benchmark: what watching costs the server, and what the page weighs.

``python -m bench console`` (``BENCH_SCALE=0.2`` for a quick pass). It starts ``llorch serve``
with one simulated mock pool of 64 slots, opens 64 token streams that keep running (10
tokens/s each) and queues 1,000 more tasks behind them; then it measures the server process's
CPU (Linux /proc) over windows with 0, 1 and 10 consoles following ``GET /v1/events``,
interleaved round by round. The consoles and stream readers are httpx clients in this process,
whose CPU is not counted. Nothing here is asserted by tests; the numbers go to bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from llama_orch.server.console.routes import ASSETS

SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
RUNNING = 64
QUEUED = 1000
WINDOW_S = max(2.0, 15.0 * SCALE)
ROUNDS = max(1, int(3 * SCALE))
VIEWERS = (0, 1, 10)
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
POOL = "bench"
MODEL = "bench-model"


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    config = {
        "gpus": {"simulated": [{"index": 0, "name": "bench (simulated)", "vram_mb": 24576}]},
        "pools": [
            {
                "id": POOL,
                "engine": "mock",
                "model": MODEL,
                "ctx": 8192,
                "devices": [0],
                "slots": RUNNING,
                "queue": {"capacity": 4 * QUEUED},
                "mock": {"ttft_ms": 50, "tokens_per_s": 10.0},
            }
        ],
    }
    path = workdir / "console.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "LOG_"))}
    command = [sys.executable, "-m", "llama_orch", "serve", "--config", str(path)]
    command += ["--bind", f"127.0.0.1:{port}"]
    if os.environ.get("BENCH_PROFILE"):  # a cProfile dump of the server, for finding hot spots
        command[1:1] = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]]
    with (workdir / "serve.log").open("wb") as log:
        popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/v1/status", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url, popen
    finally:
        popen.terminate()
        popen.wait(timeout=30)


def task(max_tokens: int) -> dict[str, Any]:
    return {
        "task_id": str(uuid.uuid4()),
        "session_id": str(uuid.uuid4()),
        "workload": "completion",
        "model_ref": MODEL,
        "engine": "mock",
        "ctx": 8192,
        "priority": "interactive",
        "max_tokens": max_tokens,
        "deadline_ms": 3_600_000,
        "prompt": "bench",
    }


async def drain(client: httpx.AsyncClient, path: str, counter: list[int]) -> None:
    async with client.stream("GET", path) as response:
        async for chunk in response.aiter_bytes():
            counter[0] += len(chunk)


@contextlib.asynccontextmanager
async def following(client: httpx.AsyncClient, paths: list[str]) -> AsyncIterator[list[int]]:
    """Read every path's stream in the background; yields a byte counter."""
    counter = [0]
    readers = [asyncio.create_task(drain(client, p, counter)) for p in paths]
    try:
        yield counter
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def measure(url: str, pid: int) -> str:
    limits = httpx.Limits(max_connections=RUNNING + 64)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=None) as client:
        running = [task(8000) for _ in range(RUNNING)]
        for body in running:
            assert (await client.post("/v1/tasks", json=body)).status_code == 202
        streams = [f"/v1/tasks/{b['task_id']}/stream" for b in running]
        async with following(client, streams):
            for _ in range(QUEUED):
                assert (await client.post("/v1/tasks", json=task(200))).status_code == 202
            status = (await client.get("/v1/status")).json()
            depth = status["queue"]["queues"][0]["depth"]
            busy = len(status["task"]["running"])
            print(f"load: {busy} running, {depth} queued", flush=True)
            samples: dict[int, list[float]] = {v: [] for v in VIEWERS}
            sent: dict[int, list[float]] = {v: [] for v in VIEWERS}
            for _ in range(ROUNDS):
                for viewers in VIEWERS:
                    async with following(client, ["/v1/events"] * viewers) as counter:
                        await asyncio.sleep(1.0)  # connected, first snapshot sent
                        start_cpu, start = cpu_s(pid), time.monotonic()
                        bytes0 = counter[0]
                        await asyncio.sleep(WINDOW_S)
                        wall = time.monotonic() - start
                        samples[viewers].append((cpu_s(pid) - start_cpu) / wall * 100)
                        sent[viewers].append((counter[0] - bytes0) / wall / max(1, viewers))
            latencies = []
            for _ in range(50):
                started = time.perf_counter()
                (await client.get("/v1/status")).raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)
            paint = await asyncio.to_thread(first_paint, url)
    base = statistics.median(samples[0])
    rows = [
        "| consoles | server CPU % (median) | added vs none | added per console | "
        "bytes/s per console |",
        "|---|---|---|---|---|",
    ]
    for viewers in VIEWERS:
        cpu = statistics.median(samples[viewers])
        added = cpu - base
        per = f"{added / viewers:+.2f}" if viewers else "-"
        rate = f"{statistics.median(sent[viewers]):,.0f}" if viewers else "-"
        rows.append(f"| {viewers} | {cpu:.2f} | {added:+.2f} | {per} | {rate} |")
    rows.append("")
    rows.append(
        f"GET /v1/status at this load: median {statistics.median(latencies):.2f} ms, "
        f"max {max(latencies):.2f} ms round trip (50 calls)."
    )
    rows.append(paint)
    return "\n".join(rows)


def page_weight() -> str:
    raw = sum(len(a.body) for a in ASSETS.values())
    packed = sum(len(gzip.compress(a.body)) for a in ASSETS.values())
    names = ", ".join(f"{name} {len(a.body):,}" for name, a in sorted(ASSETS.items()))
    return f"Page weight: {raw:,} bytes uncompressed, {packed:,} gzipped ({names})."


def first_paint(url: str, rounds: int = 10) -> str:
    """First contentful paint, and when the pool cards are on screen, in Debian's chromium."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return "First paint: not measured (no chromium; `make chromium` installs it)."
    from playwright.sync_api import sync_playwright

    paint: list[float] = []
    data: list[float] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        for _ in range(rounds):
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url + "/")
            page.wait_for_selector("#pools article")
            data.append(
                float(page.evaluate("performance.getEntriesByName('llorch:pools')[0].startTime"))
            )
            fcp = page.evaluate(
                "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? -1"
            )
            paint.append(float(fcp))
            page.close()
        browser.close()
    return (
        f"First paint on loopback, under this load ({rounds} page loads, median): first "
        f"contentful paint {statistics.median(paint):.0f} ms, pool cards on screen "
        f"{statistics.median(data):.0f} ms (max {max(data):.0f} ms) after navigation."
    )


def main() -> None:
    print(f"scale {SCALE}; cpus {os.cpu_count()}; window {WINDOW_S:g} s x {ROUNDS}", flush=True)
    print(page_weight(), flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="bench-console-") as tmp,
        server(Path(tmp)) as (
            url,
            popen,
        ),
    ):
        print(asyncio.run(measure(url, popen.pid)), flush=True)
