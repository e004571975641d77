"""Front-door benchmark: the OpenAI chat API of a fake vLLM engine, directly and through
llama-orch's ``/v1/chat/completions``.

``python -m bench frontdoor`` (``BENCH_SCALE=0.2`` for a quick pass). It starts fake vLLM
servers (``llama_orch.testing.fake_engines vllm``), one per pace, and one ``llorch serve`` whose
pools point at them. Both variants get the same request body and speak the same API, so the
difference is what the front door, the queue and the relay add:

- TTFT at concurrency 1 (engine TTFT 20 ms): time to the first chunk with content;
- tokens/s at concurrency 32 with the engine as fast as it can (one frame per write, as vLLM);
- tokens/s at concurrency 64 with the engine at 5 ms per token;
- non-streaming completion latency at concurrency 1.

Tokens are counted from ``usage.completion_tokens`` (``stream_options.include_usage``), since the
front door may carry several tokens in one chunk. Client, engines and server share the machine's
CPUs, so ratios are what to read. Nothing here is asserted by tests.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from bench.streaming import (
    LeanHttp1,
    Proc,
    Row,
    await_ready,
    concurrently,
    loop_runner,
    n,
    pct,
    table,
)

SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
ENGINES: dict[str, list[str]] = {
    "ttft": ["--ttft-ms", "20"],
    "fast": ["--batch", "1"],
    "paced": ["--tokens-per-s", "200", "--batch", "1"],
}
_CONTENT = re.compile(rb'"content":"[^"]')
_USAGE = re.compile(rb'"completion_tokens":(\d+)')
_TOKENS_OUT = re.compile(rb'"tokens_out":(\d+)')


def _start_fake(name: str, flags: list[str], log: Path) -> Proc:
    command = [sys.executable, "-m", "llama_orch.testing.fake_engines", "vllm"]
    popen = subprocess.Popen(
        [*command, "--model", name, *flags], stdout=subprocess.PIPE, stderr=log.open("wb")
    )
    assert popen.stdout is not None
    url = popen.stdout.readline().decode().strip()
    if not url.startswith("http"):
        raise RuntimeError(f"fake engine {name} did not start: {log.read_text()[-500:]}")
    return Proc(url, popen)


def _start_orch(engines: dict[str, Proc], workdir: Path, **pool: Any) -> Proc:
    """``pool``: more settings for every pool."""
    pools = [
        {
            "id": name,
            "engine": "vllm",
            "model": name,
            "ctx": 4096,
            "devices": [0],
            "slots": 128,
            "endpoint": proc.url,
            "provisioning": {"mode": "external"},
            "queue": {"capacity": 8192},
            **pool,
        }
        for name, proc in engines.items()
    ]
    config = {
        "gpus": {"simulated": [{"index": 0, "name": "bench (simulated)", "vram_mb": 24576}]},
        "server": {"max_tracked_tasks": 200_000},
        "pools": pools,
    }
    path = workdir / "orch.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with contextlib.closing(__import__("socket").socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    command = [sys.executable, "-m", "llama_orch", "serve", "--config", str(path)]
    if os.environ.get("BENCH_PROFILE"):  # a cProfile dump of the server, for finding hot spots
        command[1:1] = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]]
    log = (workdir / "orch.log").open("wb")
    popen = subprocess.Popen(
        [*command, "--bind", f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    url = f"http://127.0.0.1:{port}"
    return await_ready(url, popen, "orch.log")


@contextlib.contextmanager
def processes(workdir: Path) -> Iterator[dict[str, Proc]]:
    started: dict[str, Proc] = {}
    try:
        engines = {}
        for name, flags in ENGINES.items():
            engines[name] = started[name] = _start_fake(name, flags, workdir / f"{name}.log")
        started["orch"] = _start_orch(engines, workdir)
        yield started
    finally:
        for proc in started.values():
            proc.popen.terminate()
        for proc in started.values():
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()


class Variant:
    """One way to the engine: ``direct`` (its own URL) or ``orch`` (llama-orch's)."""

    def __init__(self, name: str, urls: dict[str, str], accept: str | None = None) -> None:
        self.name = name
        self._http = {engine: LeanHttp1(url, accept=accept) for engine, url in urls.items()}

    def _body(self, engine: str, tokens: int, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": engine,
            "messages": [{"role": "user", "content": "bench"}],
            "max_tokens": tokens,
            "seed": 1,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def stream(self, engine: str, tokens: int) -> tuple[float, int, float]:
        """(seconds to the first content, tokens, seconds in all)."""
        body = self._body(engine, tokens, True)
        start = time.perf_counter()
        first = 0.0
        tail = b""
        async with self._http[engine].stream("POST", "/v1/chat/completions", body) as chunks:
            async for chunk in chunks:
                if not first and _CONTENT.search(chunk):
                    first = time.perf_counter()
                tail = (tail + chunk)[-4096:]
        end = time.perf_counter()
        found = _USAGE.findall(tail)
        return first - start, int(found[-1]) if found else 0, end - start

    async def whole(self, engine: str, tokens: int) -> float:
        start = time.perf_counter()
        status, _ = await self._http[engine].post(
            "/v1/chat/completions", self._body(engine, tokens, False)
        )
        if status != 200:
            raise RuntimeError(f"{self.name}: HTTP {status}")
        return time.perf_counter() - start

    async def aclose(self) -> None:
        for http in self._http.values():
            await http.aclose()


class TaskVariant(Variant):
    """The task API in one hop (``POST /v1/tasks``, ``Accept: text/event-stream``), for
    telling the front door's own cost from the path every task takes."""

    async def stream(self, engine: str, tokens: int) -> tuple[float, int, float]:
        body = {
            "task_id": str(uuid.uuid4()),
            "session_id": str(uuid.uuid4()),
            "workload": "completion",
            "model_ref": engine,
            "engine": "vllm",
            "ctx": 4096,
            "priority": "interactive",
            "max_tokens": tokens,
            "deadline_ms": 60_000,
            "prompt": "bench",
            "seed": 1,
        }
        start = time.perf_counter()
        first = 0.0
        tail = b""
        async with self._http[engine].stream("POST", "/v1/tasks", body) as chunks:
            async for chunk in chunks:
                if not first and b"event: token" in chunk:
                    first = time.perf_counter()
                tail = (tail + chunk)[-4096:]
        end = time.perf_counter()
        found = _TOKENS_OUT.findall(tail)
        return first - start, int(found[-1]) if found else 0, end - start


async def ttft(vs: list[Variant]) -> list[Row]:
    """Concurrency 1, engine TTFT 20 ms, 64 tokens: time to the first content chunk."""
    ms: dict[str, list[float]] = {v.name: [] for v in vs}
    for _ in range(n(200)):
        for v in vs:
            first, _, _ = await v.stream("ttft", 64)
            ms[v.name].append(first * 1000)
    base50, base99 = pct(ms["direct"], 0.5), pct(ms["direct"], 0.99)
    return [
        {
            "variant": name,
            "TTFT p50 ms": f"{pct(values, 0.5):.2f}",
            "TTFT p99 ms": f"{pct(values, 0.99):.2f}",
            "added p50 ms": "-" if name == "direct" else f"{pct(values, 0.5) - base50:+.2f}",
            "added p99 ms": "-" if name == "direct" else f"{pct(values, 0.99) - base99:+.2f}",
        }
        for name, values in ms.items()
    ]


async def _throughput(vs: list[Variant], engine: str, count: int, tokens: int) -> list[Row]:
    rates: dict[str, list[float]] = {v.name: [] for v in vs}
    for _ in range(max(2, n(5))):
        for v in vs:
            start = time.perf_counter()
            results = await concurrently(count, functools.partial(v.stream, engine, tokens))
            wall = time.perf_counter() - start
            rates[v.name].append(sum(r[1] for r in results) / wall)
    base = statistics.median(rates["direct"])
    return [
        {
            "variant": name,
            "tokens/s (median)": f"{statistics.median(r):,.0f}",
            "x direct": "1.00" if name == "direct" else f"{statistics.median(r) / base:.2f}",
        }
        for name, r in rates.items()
    ]


async def fastest_c32(vs: list[Variant]) -> list[Row]:
    """Concurrency 32 x 256 tokens, engine unpaced, one frame per write."""
    return await _throughput(vs, "fast", 32, 256)


async def paced_c64(vs: list[Variant]) -> list[Row]:
    """Concurrency 64 x 200 tokens, engine at 5 ms per token."""
    return await _throughput(vs, "paced", 64, 200)


async def non_streaming(vs: list[Variant]) -> list[Row]:
    """Concurrency 1, one JSON answer of 64 tokens from the unpaced engine."""
    ms: dict[str, list[float]] = {v.name: [] for v in vs if not isinstance(v, TaskVariant)}
    for _ in range(n(200)):
        for v in vs:
            if not isinstance(v, TaskVariant):  # the task API always streams
                ms[v.name].append(await v.whole("fast", 64) * 1000)
    base = pct(ms["direct"], 0.5)
    return [
        {
            "variant": name,
            "latency p50 ms": f"{pct(values, 0.5):.2f}",
            "latency p99 ms": f"{pct(values, 0.99):.2f}",
            "added p50 ms": "-" if name == "direct" else f"{pct(values, 0.5) - base:+.2f}",
        }
        for name, values in ms.items()
    ]


SCENARIOS = [
    ("TTFT overhead, c=1", ttft),
    ("Relay throughput, c=32, fastest engine", fastest_c32),
    ("Relay throughput, c=64, 5 ms/token", paced_c64),
    ("Non-streaming overhead, c=1", non_streaming),
]


async def run(workdir: Path) -> None:
    with processes(workdir) as procs:
        direct = Variant("direct", {name: procs[name].url for name in ENGINES})
        orch = Variant("orch", {name: procs["orch"].url for name in ENGINES})
        tasks = TaskVariant(
            "tasks-one-hop",
            {name: procs["orch"].url for name in ENGINES},
            accept="text/event-stream",
        )
        vs = [direct, orch, tasks]
        try:
            for v in vs:  # warm-up: connections, imports, first-call caches
                for engine in ENGINES:
                    await v.stream(engine, 8)
            only = os.environ.get("BENCH_ONLY", "")
            for title, scenario in SCENARIOS:
                if only and scenario.__name__ not in only.split(","):
                    continue
                started = time.perf_counter()
                rows = await scenario(vs)
                took = time.perf_counter() - started
                print(f"### {title}\n\n{table(rows)}", f"({took:.1f} s)\n", flush=True)
        finally:
            for v in vs:
                await v.aclose()


def main() -> None:
    print(f"scale {SCALE}; cpus {os.cpu_count()}; python {sys.version.split()[0]}", flush=True)
    runner = loop_runner()
    with tempfile.TemporaryDirectory(prefix="bench-frontdoor-") as tmp:
        runner(run(Path(tmp)))
