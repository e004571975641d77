"""Streaming benchmark: the fake llama.cpp engine hit directly, then through ``llorch serve``.

``python -m bench streaming`` (``BENCH_SCALE=0.2`` for a quick pass). It starts fake
``llama-server`` processes (``llama_orch.testing.fake_engines``), one per engine pace, and two
``llorch serve`` subprocesses whose pools point at them (``provisioning.mode: external``): one
with micro-batch off, one with it on. Each scenario then runs, interleaved round by round,
against every *variant*: ``direct`` (client -> engine, HTTP/1.1; the physical limit) and
``orch/{h1,h2}/{mb-off,mb-on}`` (client -> llama-orch over HTTP/1.1 or h2c -> engine).

The client is httpx in this process; it costs the same CPU per byte whichever variant it
talks to, and on a 2-core machine it competes with the servers, so ratios are what to read.
Nothing here is asserted by tests; the numbers go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
# name -> fake engine flags; each fake gets its own pool (model name = pool name).
ENGINES: dict[str, list[str]] = {
    "ttft": ["--ttft-ms", "20", "--slots", "64"],
    # Unpaced, 64 frames per write: a memory-speed ceiling no engine reaches.
    "fast": ["--slots", "64"],
    # Unpaced, one frame per write, as llama.cpp (and vLLM, TGI) write a stream.
    "fast1": ["--slots", "64", "--batch", "1"],
    "paced": ["--tokens-per-s", "200", "--slots", "128"],
    "wide": ["--tokens-per-s", "10", "--slots", "1100"],
    # One slot held by a task whose first token never comes: admissions behind it stay queued.
    "held": ["--ttft-ms", "3600000", "--slots", "1"],
}
SLOTS = {"ttft": 64, "fast": 64, "fast1": 64, "paced": 128, "wide": 1100, "held": 1}


def n(count: int) -> int:
    return max(1, int(count * SCALE))


# -- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    url: str
    popen: subprocess.Popen[bytes]

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def await_ready(url: str, popen: subprocess.Popen[bytes], log: str) -> Proc:
    """The llama-orch server at ``url`` once every pool is Ready (30 s at most)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            pools_ready = httpx.get(f"{url}/v1/capabilities", timeout=1).json()["pools"]
            if all(p["ready"] for p in pools_ready):
                return Proc(url, popen)
        time.sleep(0.1)
    popen.kill()
    raise RuntimeError(f"llorch serve did not become ready; see {log}")


def loop_runner() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """uvloop's ``run`` when installed (as the server uses), else asyncio's."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run
    return asyncio.run


def _start_fake(name: str, flags: list[str], log: Path) -> Proc:
    command = [sys.executable, "-m", "llama_orch.testing.fake_engines", "llamacpp"]
    command += ["--model", name, *flags]
    popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log.open("wb"))
    assert popen.stdout is not None
    url = popen.stdout.readline().decode().strip()
    if not url.startswith("http"):
        raise RuntimeError(f"fake engine {name} did not start: {log.read_text()[-500:]}")
    return Proc(url, popen)


def _start_orch(engines: dict[str, Proc], workdir: Path, microbatch: bool) -> Proc:
    pools = [
        {
            "id": name,
            "engine": "llamacpp",
            "model": name,
            "ctx": 4096,
            "devices": [0],
            "slots": SLOTS[name],
            "endpoint": proc.url,
            "provisioning": {"mode": "external"},
            "queue": {"capacity": 8192},
        }
        for name, proc in engines.items()
    ]
    config = {
        "gpus": {"simulated": [{"index": 0, "name": "bench (simulated)", "vram_mb": 24576}]},
        "server": {"max_tracked_tasks": 200_000},
        "pools": pools,
    }
    suffix = "on" if microbatch else "off"
    path = workdir / f"orch-mb-{suffix}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with contextlib.closing(__import__("socket").socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "ORCHD_SSE_MICROBATCH": "true" if microbatch else "false"}
    env.pop("AUTH_TOKEN", None)
    command = [sys.executable, "-m", "llama_orch", "serve", "--config", str(path)]
    command += ["--bind", f"127.0.0.1:{port}"]
    if os.environ.get("BENCH_PROFILE"):  # a cProfile dump per server, for finding hot spots
        profile = f"{os.environ['BENCH_PROFILE']}-mb-{suffix}.prof"
        command[1:1] = ["-m", "cProfile", "-o", profile]
    log = (workdir / f"orch-mb-{suffix}.log").open("wb")
    popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    return await_ready(url, popen, log.name)


@contextlib.contextmanager
def processes(workdir: Path) -> Iterator[tuple[dict[str, Proc], dict[bool, Proc]]]:
    started: list[Proc] = []
    try:
        engines = {}
        for name, flags in ENGINES.items():
            engines[name] = _start_fake(name, flags, workdir / f"fake-{name}.log")
            started.append(engines[name])
        orch = {}
        for microbatch in (False, True):
            orch[microbatch] = _start_orch(engines, workdir, microbatch)
            started.append(orch[microbatch])
        yield engines, orch
    finally:
        for proc in started:
            proc.popen.terminate()
        for proc in started:
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()


# -- one stream, either way ------------------------------------------------------------------


class Http:
    """The client side of one variant: a POST with a JSON answer, and a streamed request."""

    async def post(self, url: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        raise NotImplementedError

    def stream(
        self, method: str, url: str, body: dict[str, Any] | None = None
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]:
        raise NotImplementedError


class HttpxHttp(Http):
    """httpx: used for HTTP/2 (prior knowledge), which the lean client does not speak."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(self, url: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        response = await self.client.post(url, json=body)
        return response.status_code, response.content

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, url: str, body: dict[str, Any] | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self.client.stream(method, url, json=body) as response:
            yield response.aiter_raw()


class LeanHttp1(Http):
    """A minimal keep-alive HTTP/1.1 client over asyncio streams.

    httpx's connection pool scans every connection on every request, so with hundreds of open
    streams the client, not the server, sets the pace; this client costs the same small
    amount per request whoever answers. It handles what the servers here send: Content-Length
    and chunked bodies.
    """

    def __init__(
        self, base_url: str, *, accept: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self._host, self._port = host, int(port)
        self._accept = f"Accept: {accept}\r\n" if accept else ""
        self._accept += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _send(
        self, method: str, url: str, body: dict[str, Any] | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, dict[bytes, bytes]]:
        payload = b"" if body is None else orjson.dumps(body)
        path = url if url.startswith("/") else "/" + url.split("/", 3)[3]
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n{self._accept}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        while True:
            reused = bool(self._idle)
            if reused:
                reader, writer = self._idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self._host, self._port, limit=2**20)
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                if not reused:
                    raise
                # The server closed this idle keep-alive connection; try a fresh one.
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(b":")
                headers[key.strip().lower()] = value.strip()
        return reader, writer, status, headers

    async def _body(
        self, reader: asyncio.StreamReader, headers: dict[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        if headers.get(b"transfer-encoding") == b"chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return
                yield (await reader.readexactly(size + 2))[:-2]
        length = int(headers.get(b"content-length", b"0"))
        if length:
            yield await reader.readexactly(length)

    async def post(self, url: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        reader, writer, status, headers = await self._send("POST", url, body)
        data = b"".join([chunk async for chunk in self._body(reader, headers)])
        self._idle.append((reader, writer))
        return status, data

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, url: str, body: dict[str, Any] | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        reader, writer, _, headers = await self._send(method, url, body)
        finished = False

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal finished
            async for chunk in self._body(reader, headers):
                yield chunk
            finished = True

        try:
            yield chunks()
        finally:
            if finished:
                self._idle.append((reader, writer))
            else:
                writer.close()

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()


@dataclass
class Result:
    ttft_s: float
    tokens: int
    total_s: float


@dataclass
class Variant:
    """A way to run one stream: directly against the fake, or through llama-orch."""

    name: str
    http: Http
    orch: Proc | None = None
    engines: dict[str, Proc] = field(default_factory=dict)
    h2_resets: int = 0
    errors: list[str] = field(default_factory=list)

    async def stream(
        self, engine: str, tokens: int, *, cancel_after: int | None = None
    ) -> tuple[Result, float | None]:
        if self.orch is None:
            return await self._direct(engine, tokens), None
        return await self._orch(engine, tokens, cancel_after)

    async def _direct(self, engine: str, tokens: int) -> Result:
        url = f"{self.engines[engine].url}/completion"
        body = {"prompt": "bench", "n_predict": tokens, "stream": True, "seed": 1}
        start = time.perf_counter()
        first = 0.0
        data = bytearray()
        async with self.http.stream("POST", url, body) as chunks:
            async for chunk in chunks:
                if not first:
                    first = time.perf_counter()
                data += chunk
        end = time.perf_counter()
        # One ``data:`` frame per token, then the final ``stop`` frame.
        return Result(first - start, data.count(b"data: ") - 1, end - start)

    async def _orch(
        self, engine: str, tokens: int, cancel_after: int | None
    ) -> tuple[Result, float | None]:
        task_id = str(uuid.uuid4())
        body = {
            "task_id": task_id,
            "session_id": str(uuid.uuid4()),
            "workload": "completion",
            "model_ref": engine,
            "engine": "llamacpp",
            "ctx": 2048,
            "priority": "interactive",
            "max_tokens": tokens,
            "deadline_ms": 600_000,
            "prompt": "bench",
            "seed": 1,
        }
        start = time.perf_counter()
        status, answer = await self.http.post("/v1/tasks", body)
        if status != 202:
            self.errors.append(f"POST /v1/tasks {status}: {answer[:160]!r}")
            return Result(float("nan"), 0, time.perf_counter() - start), None
        first = 0.0
        acked: float | None = None
        data = bytearray()
        async with self.http.stream("GET", f"/v1/tasks/{task_id}/stream") as chunks:
            async for chunk in chunks:
                data += chunk
                if not first and b"event: token" in chunk:
                    first = time.perf_counter()
                if (
                    cancel_after is not None
                    and acked is None
                    and data.count(b"event: token") >= cancel_after
                ):
                    await self.cancel(task_id)
                    acked = time.perf_counter()
        end = time.perf_counter()
        at = data.rfind(b"event: end\ndata: ")
        if at >= 0:
            tokens_out = int(orjson.loads(data[at:].split(b"\n")[1][6:])["tokens_out"])
        else:  # an error frame: count it and what was delivered before it
            self.errors.append(bytes(data[data.rfind(b"event: error") :][:200]).decode())
            tokens_out = data.count(b"event: token")
            first = first or end
        quiet = None if acked is None else max(0.0, end - acked)
        return Result(first - start, tokens_out, end - start), quiet

    async def admit(self, model: str, *, cancel: bool = True) -> None:
        task_id = str(uuid.uuid4())
        body = {
            "task_id": task_id,
            "session_id": str(uuid.uuid4()),
            "workload": "completion",
            "model_ref": model,
            "engine": "llamacpp",
            "ctx": 2048,
            "priority": "interactive",
            "max_tokens": 16,
            "deadline_ms": 600_000,
            "prompt": "bench",
        }
        status, answer = await self.http.post("/v1/tasks", body)
        if status != 202:
            raise RuntimeError(f"POST /v1/tasks {status}: {answer[:160]!r}")
        if cancel:
            await self.cancel(task_id)

    async def cancel(self, task_id: str) -> None:
        try:
            status, _ = await self.http.post(f"/v1/tasks/{task_id}/cancel")
        except httpx.LocalProtocolError:
            # httpcore's h2 state machine trips when the server answers 204 and resets the
            # stream (NO_ERROR) before the client's empty END_STREAM frame: the cancel was
            # served, only the client's bookkeeping failed. Counted, not fatal.
            self.h2_resets += 1
            return
        if status != 204:
            raise RuntimeError(f"cancel answered {status}")


@contextlib.asynccontextmanager
async def variants(
    engines: dict[str, Proc], orch: dict[bool, Proc]
) -> AsyncIterator[list[Variant]]:
    """direct and orch/h1 use the lean HTTP/1.1 client; orch/h2 uses httpx (HTTP/2)."""
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=4096)
    async with contextlib.AsyncExitStack() as stack:
        direct = {name: LeanHttp1(proc.url) for name, proc in engines.items()}
        out = [Variant("direct", _ByEngine(direct), engines=engines)]
        for microbatch in (False, True):
            proc = orch[microbatch]
            mb = "mb-on" if microbatch else "mb-off"
            h2 = httpx.AsyncClient(
                base_url=proc.url, limits=limits, timeout=120.0, http1=False, http2=True
            )
            await stack.enter_async_context(h2)
            out.append(Variant(f"orch/h1/{mb}", LeanHttp1(proc.url), proc, engines))
            out.append(Variant(f"orch/h2/{mb}", HttpxHttp(h2), proc, engines))
        yield out


class _ByEngine(Http):
    """The direct variant talks to several fake engines: one lean client per engine URL."""

    def __init__(self, clients: dict[str, LeanHttp1]) -> None:
        self._by_url = {c._host + ":" + str(c._port): c for c in clients.values()}

    def _client(self, url: str) -> LeanHttp1:
        return self._by_url[url.split("/")[2]]

    async def post(self, url: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        return await self._client(url).post(url, body)

    def stream(
        self, method: str, url: str, body: dict[str, Any] | None = None
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._client(url).stream(method, url, body)


# -- scenarios -------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(v for v in values if v == v)  # NaN marks a refused request
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def concurrently(count: int, make: Callable[[], Awaitable[Any]]) -> list[Any]:
    return list(await asyncio.gather(*(make() for _ in range(count))))


Row = dict[str, str]


async def ttft_overhead(vs: list[Variant]) -> list[Row]:
    """Concurrency 1, engine TTFT 20 ms, 64 tokens: the time orch adds to the first token."""
    ttft: dict[str, list[float]] = {v.name: [] for v in vs}
    for _ in range(n(100)):
        for v in vs:
            result, _ = await v.stream("ttft", 64)
            ttft[v.name].append(result.ttft_s * 1000)
    base50, base99 = pct(ttft["direct"], 0.5), pct(ttft["direct"], 0.99)
    return [
        {
            "variant": name,
            "TTFT p50 ms": f"{pct(ms, 0.5):.2f}",
            "TTFT p99 ms": f"{pct(ms, 0.99):.2f}",
            "added p50 ms": "-" if name == "direct" else f"{pct(ms, 0.5) - base50:+.2f}",
            "added p99 ms": "-" if name == "direct" else f"{pct(ms, 0.99) - base99:+.2f}",
        }
        for name, ms in ttft.items()
    ]


async def relay_throughput(vs: list[Variant]) -> list[Row]:
    """Concurrency 32 x 256 tokens, engine as fast as it can, one frame per write (as llama.cpp
    writes): aggregate tokens/s."""
    return await _relay(vs, "fast1")


async def relay_throughput_batched(vs: list[Variant]) -> list[Row]:
    """The same with the fake writing 64 frames per send: ``direct`` runs at memory speed."""
    return await _relay(vs, "fast")


async def _relay(vs: list[Variant], pool: str) -> list[Row]:
    rates: dict[str, list[float]] = {v.name: [] for v in vs}
    for _ in range(max(2, n(5))):
        for v in vs:
            start = time.perf_counter()
            results = await concurrently(32, functools.partial(v.stream, pool, 256))
            wall = time.perf_counter() - start
            rates[v.name].append(sum(r.tokens for r, _ in results) / wall)
    base = statistics.median(rates["direct"])
    return [
        {
            "variant": name,
            "tokens/s (median)": f"{statistics.median(r):,.0f}",
            "x direct": "1.00" if name == "direct" else f"{statistics.median(r) / base:.2f}",
        }
        for name, r in rates.items()
    ]


async def realistic_load(vs: list[Variant]) -> list[Row]:
    """Concurrency 64 x 128 tokens at 5 ms/token: p99 TTFT and tokens/s against direct."""
    ttft: dict[str, list[float]] = {v.name: [] for v in vs}
    rates: dict[str, list[float]] = {v.name: [] for v in vs}
    for _ in range(max(2, n(3))):
        for v in vs:
            start = time.perf_counter()
            results = await concurrently(64, functools.partial(v.stream, "paced", 128))
            wall = time.perf_counter() - start
            ttft[v.name] += [r.ttft_s * 1000 for r, _ in results]
            rates[v.name].append(sum(r.tokens for r, _ in results) / wall)
    base = statistics.median(rates["direct"])
    return [
        {
            "variant": name,
            "TTFT p50 ms": f"{pct(ttft[name], 0.5):.1f}",
            "TTFT p99 ms": f"{pct(ttft[name], 0.99):.1f}",
            "tokens/s": f"{statistics.median(r):,.0f}",
            "x direct": "1.00" if name == "direct" else f"{statistics.median(r) / base:.2f}",
        }
        for name, r in rates.items()
    ]


async def admission_rate(vs: list[Variant]) -> list[Row]:
    """POST /v1/tasks at concurrency 64, each task canceled right after; server CPU per 1,000.

    ``dispatched``: the pool has free slots, so most tasks reach the engine before the cancel
    (an upstream request opened and closed each time). ``queued``: the pool's one slot is held,
    so tasks are admitted and canceled in the queue (the control-plane cost alone).
    """
    rows = []
    total = n(2000)
    for v in vs:
        if v.orch is None:
            continue
        if not v.name.endswith("mb-off"):
            continue  # micro-batch has no part in admission; it runs on the other server
        for mode, model in (("dispatched", "ttft"), ("queued", "held")):
            if mode == "queued":
                await v.admit("held", cancel=False)  # takes the held pool's only slot
            queue = iter(range(total))

            async def worker(v: Variant = v, queue: Iterator[int] = queue, m: str = model) -> None:
                for _ in queue:
                    await v.admit(m)

            cpu0 = v.orch.cpu_s()
            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(64)))
            wall = time.perf_counter() - start
            cpu = v.orch.cpu_s() - cpu0
            rows.append(
                {
                    "variant": f"{v.name} ({mode})",
                    "admissions/s": f"{total / wall:,.0f}",
                    "server CPU s / 1,000": f"{cpu * 1000 / total:.2f}",
                    "server-bound max/s": f"{total / cpu:,.0f}" if cpu else "-",
                }
            )
    return rows


async def open_streams(vs: list[Variant]) -> list[Row]:
    """1,000 concurrent streams (10 tokens/s each): server RSS at peak and tokens/s."""
    rows = []
    count, tokens = n(1000), 30
    for v in vs:
        proc = v.orch or v.engines["wide"]
        done = asyncio.Event()

        async def sample(proc: Proc = proc, done: asyncio.Event = done) -> float:
            top = proc.rss_mb()
            while not done.is_set():
                top = max(top, proc.rss_mb())
                await asyncio.sleep(0.1)
            return top

        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        results = await concurrently(count, functools.partial(v.stream, "wide", tokens))
        wall = time.perf_counter() - start
        done.set()
        peak = await sampler
        rows.append(
            {
                "variant": v.name,
                "streams": str(count),
                "peak RSS MB": f"{peak:.0f}" + (" (engine)" if v.orch is None else ""),
                "tokens/s": f"{sum(r.tokens for r, _ in results) / wall:,.0f}",
            }
        )
    return rows


async def cancel_to_quiet(vs: list[Variant]) -> list[Row]:
    """Cancel after 5 tokens of a 5 ms/token stream: ms from the 204 to the stream's end."""
    quiet: dict[str, list[float]] = {v.name: [] for v in vs if v.orch is not None}
    for _ in range(n(100)):
        for v in vs:
            if v.orch is None:
                continue
            _, q = await v.stream("paced", 200, cancel_after=5)
            if q is not None:
                quiet[v.name].append(q * 1000)
    return [
        {
            "variant": name,
            "p50 ms": f"{pct(ms, 0.5):.2f}",
            "p99 ms": f"{pct(ms, 0.99):.2f}",
            "samples": str(len(ms)),
        }
        for name, ms in quiet.items()
    ]


SCENARIOS: list[tuple[str, Callable[[list[Variant]], Awaitable[list[Row]]]]] = [
    ("TTFT overhead, concurrency 1, engine TTFT 20 ms, 64 tokens", ttft_overhead),
    (
        "Relay throughput, concurrency 32 x 256 tokens, engine unpaced, one frame per write",
        relay_throughput,
    ),
    (
        "Relay throughput, concurrency 32 x 256 tokens, engine unpaced, 64 frames per write",
        relay_throughput_batched,
    ),
    ("Realistic load, concurrency 64 x 128 tokens at 5 ms/token", realistic_load),
    ("Admission rate, concurrency 64, each task canceled right after", admission_rate),
    ("1,000 concurrent open streams, 30 tokens at 10 tokens/s each", open_streams),
    ("Cancel-to-quiet, 5 ms/token, cancel after 5 tokens", cancel_to_quiet),
]


def table(rows: list[Row]) -> str:
    if not rows:
        return "(no rows)\n"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(row[k] for k in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


async def run(workdir: Path) -> str:
    out = []
    with processes(workdir) as (engines, orch):
        async with variants(engines, orch) as vs:
            for v in vs:  # warm-up: connections, imports, first-call caches
                await v.stream("fast", 8)
            only = os.environ.get("BENCH_ONLY", "")
            for title, scenario in SCENARIOS:
                if only and scenario.__name__ not in only.split(","):
                    continue
                started = time.perf_counter()
                rows = await scenario(vs)
                section = f"### {title}\n\n{table(rows)}"
                print(section, f"({time.perf_counter() - started:.1f} s)\n", flush=True)
                out.append(section)
            resets = {v.name: v.h2_resets for v in vs if v.h2_resets}
            if resets:
                print(f"client-side h2 resets on cancel (served, not retried): {resets}")
            for v in vs:
                if v.errors:
                    print(f"{v.name}: {len(v.errors)} streams ended in error, e.g. {v.errors[0]}")
    return "\n".join(out)


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 16384)), hard))
    print(f"scale {SCALE}; cpus {os.cpu_count()}; python {sys.version.split()[0]}", flush=True)
    runner = loop_runner()
    keep = os.environ.get("BENCH_WORKDIR")  # keep configs and server logs there
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        runner(run(Path(keep)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        runner(run(Path(tmp)))
