"""The relay's floor: what a server costs that only passes the engine's stream through.

``python -m bench relay``. One paced fake OpenAI engine (5 ms per token), 64 closed-loop
clients x 128 tokens (``BENCH_TOKENS``), as ``bench cpu``'s c=64 scenario. Variants, interleaved
round by round:

- ``direct``: the client reads the engine itself;
- ``granian/aiohttp``, ``uvicorn/aiohttp``: a do-nothing ASGI app (``bench/_relay_app.py``)
  relays the engine's body unchanged, read with aiohttp, under each server binding;
- ``granian/product``: the same relay reading through llama-orch's own upstream client;
- ``orch/chat``: ``llorch serve``'s ``/v1/chat/completions`` on a pool of that engine.

Each row gives the engine's and the relay's CPU per task and their ratio: the gap between a
relay row and ``orch/chat`` is what the orchestrator's own work costs (admission, placement,
the transcript, framing, logs, metrics), the gap between ``direct`` and a relay row what any
Python relay on that binding costs. Nothing is asserted; the numbers go to bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.binding import _free_port, _load, _tree_cpu_s
from bench.cpu import KEY, _start_fake, _start_orch
from bench.streaming import LeanHttp1, Proc, Row, loop_runner, n, pct, table

#: ``BENCH_TOKENS=16`` against the default splits CPU per task into fixed and per-token parts.
TOKENS = int(os.environ.get("BENCH_TOKENS", "128"))
CLIENTS = 64
RELAYS: dict[str, tuple[list[str], str]] = {
    "granian/aiohttp": (
        ["-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--log-level", "warning"],
        "aiohttp",
    ),
    "granian/product": (
        ["-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--log-level", "warning"],
        "product",
    ),
    "uvicorn/aiohttp": (
        ["-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log"],
        "aiohttp",
    ),
}
_BODY = {
    "model": "paced",
    "messages": [{"role": "user", "content": "bench"}],
    "max_tokens": TOKENS,
    "seed": 1,
    "stream": True,
    "stream_options": {"include_usage": True},
}


def _start_relay(name: str, engine: Proc) -> Proc:
    args, client = RELAYS[name]
    port = _free_port()
    level = ["--log-level", "warning"] if name.startswith("uvicorn") else []
    command = [sys.executable, *args, *level, "--port", str(port), "bench._relay_app:app"]
    env = dict(os.environ, RELAY_UPSTREAM=engine.url, RELAY_CLIENT=client, RELAY_KEY=KEY)
    root = str(Path(__file__).resolve().parent.parent)
    popen = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/?n=1", timeout=2)
            return Proc(url, popen)
        except httpx.TransportError:
            time.sleep(0.1)
    popen.kill()
    raise RuntimeError(f"{name} did not start")


async def _window(
    name: str, proc: Proc, engine: Proc, seconds: float
) -> tuple[int, float, float, list[float]]:
    """(tasks, engine CPU s, relay CPU s, TTFT ms) of one closed-loop window."""
    direct = name == "direct"
    orch = name == "orch/chat"
    http = LeanHttp1(proc.url, headers={"Authorization": f"Bearer {KEY}"} if direct else None)
    method, path, body = (
        ("POST", "/v1/chat/completions", _BODY)
        if direct or orch
        else ("GET", f"/?n={TOKENS}", None)
    )
    done = 0
    ttft: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while True:
            start, first = time.perf_counter(), 0.0
            async with http.stream(method, path, body) as chunks:
                async for chunk in chunks:
                    if not first and b'"content":"' in chunk:
                        first = time.perf_counter()
            ttft.append((first - start) * 1000)
            done += 1
            if time.perf_counter() >= stop_at:
                return

    engine0 = engine.cpu_s()
    relay0 = 0.0 if direct else _tree_cpu_s(proc)
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    relay = 0.0 if direct else _tree_cpu_s(proc) - relay0
    await http.aclose()
    return done, engine.cpu_s() - engine0, relay, ttft


async def run(workdir: Path) -> None:
    engine = _start_fake("paced", ["--tokens-per-s", "200", "--batch", "1"], workdir / "e.log")
    procs: dict[str, Proc] = {"direct": engine}
    try:
        for name in RELAYS:
            procs[name] = _start_relay(name, engine)
        procs["orch/chat"] = _start_orch({"paced": engine}, workdir)
        load = _load()
        totals: dict[str, list[float]] = {name: [0, 0.0, 0.0] for name in procs}
        ttfts: dict[str, list[float]] = {name: [] for name in procs}
        for _ in range(max(2, n(3))):
            for name, proc in procs.items():
                done, engine_s, relay_s, ttft = await _window(name, proc, engine, 3.0)
                totals[name][0] += done
                totals[name][1] += engine_s
                totals[name][2] += relay_s
                ttfts[name] += ttft
        rows: list[Row] = []
        for name, (count, engine_s, relay_s) in totals.items():
            per = max(1.0, count)
            rows.append(
                {
                    "variant": name,
                    "tasks": f"{int(count)}",
                    "TTFT p50 / p99 ms": f"{pct(ttfts[name], 0.5):.1f} / "
                    f"{pct(ttfts[name], 0.99):.1f}",
                    "engine CPU ms/task": f"{engine_s / per * 1000:.2f}",
                    "relay CPU ms/task": "-" if name == "direct" else f"{relay_s / per * 1000:.2f}",
                    "relay / engine": "-" if name == "direct" else f"{relay_s / engine_s:.2f}",
                }
            )
        print(f"### {CLIENTS} clients x {TOKENS} tokens, 5 ms/token\n\n{table(rows)}")
        print(f"(load average before {load}, after {_load()})", flush=True)
    finally:
        for proc in procs.values():
            proc.popen.terminate()
        for proc in procs.values():
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()


def main() -> None:
    print(f"scale {os.environ.get('BENCH_SCALE', '1.0')}; cpus {os.cpu_count()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        loop_runner()(run(Path(tmp)))
