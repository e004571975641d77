"""CPU per task: a fake OpenAI-compatible engine hit directly, then through ``llorch serve``.

``python -m bench cpu`` (``BENCH_SCALE=0.3`` for a quick pass). It starts two fake OpenAI
servers (``llama_orch.testing.fake_engines openai``, one HTTP chunk per token): ``paced`` at
5 ms per token and ``fast`` as fast as it can, and one ``llorch serve`` whose pools reach them
as a new user would configure it: ``engine: openai``, ``upstream_api: chat``, ``slots: 256``,
the key from ``api_key_env``. Variants, interleaved round by round:

- ``direct``: client -> the fake's ``/v1/chat/completions`` (the physical limit);
- ``orch/chat``: client -> llama-orch's ``/v1/chat/completions`` -> the fake;
- ``orch/tasks``: client -> ``POST /v1/tasks`` with ``Accept: text/event-stream`` (one hop).

Scenarios: 64 closed-loop clients x 128 tokens on the paced engine; one client x 64 tokens on
the paced engine; 32 concurrent x 256 tokens on the fast engine. CPU per task is the user +
system time of each process (``/proc``) over the variant's window divided by the tasks
completed in it. The client runs in this process; on a shared machine read ratios within one
table. Nothing here is asserted by tests.

Time to first token is also split per task: each prompt carries a marker, the fakes write when
they read each request and sent its first token (``--timings``, CLOCK_MONOTONIC, which every
process on the machine shares), and "added outside engine" compares, against ``direct``, the
client's time to first token less the engine's own part of it, so the engine's own stalls (its
timers firing late under load) no longer count as the server's. "The same, steady" leaves out
each client's first task of a window, which starts with all the others at once: that burst
is how the benchmark starts a window, not how a closed loop of 64 clients runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.streaming import LeanHttp1, Proc, Row, await_ready, loop_runner, n, pct, table

SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
KEY = "sk-bench-key-0000"
#: ``BENCH_BASELINE=<dir>``: a second server runs the sources under that directory (e.g. an
#: exported earlier commit's ``src``), and its variants join every round, for before/after.
BASELINE = os.environ.get("BENCH_BASELINE", "")
#: ``BENCH_BASELINE_SERVER='{"trace_retention": 0}'``: server settings (JSON) for the second
#: server only, e.g. the same sources with one feature off, to measure what it costs.
BASELINE_SERVER: dict[str, Any] = json.loads(os.environ.get("BENCH_BASELINE_SERVER") or "{}")
ENGINES: dict[str, list[str]] = {
    "paced": ["--tokens-per-s", "200", "--batch", "1"],
    "fast": ["--batch", "1"],
}
_CONTENT = re.compile(rb'"content":"[^"]')
_USAGE = re.compile(rb'"completion_tokens":(\d+)')
_TOKENS_OUT = re.compile(rb'"tokens_out":(\d+)')


def _start_fake(name: str, flags: list[str], log: Path) -> Proc:
    command = [sys.executable, "-m", "llama_orch.testing.fake_engines", "openai"]
    command += ["--model", name, "--api-key", KEY, *flags]
    command += ["--timings", str(_timings_path(log.parent, name))]
    popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log.open("wb"))
    assert popen.stdout is not None
    url = popen.stdout.readline().decode().strip()
    if not url.startswith("http"):
        raise RuntimeError(f"fake engine {name} did not start: {log.read_text()[-500:]}")
    return Proc(url, popen)


def _timings_path(workdir: Path, engine: str) -> Path:
    return workdir / f"{engine}.timings.jsonl"


def _start_orch(engines: dict[str, Proc], workdir: Path, baseline: str = "") -> Proc:
    pools = [
        {
            "id": name,
            "engine": "openai",
            "model": name,
            "endpoint": proc.url,
            "api_key_env": "BENCH_OPENAI_KEY",
            "upstream_api": "chat",
            "slots": 256,
            "provisioning": {"mode": "external"},
            "queue": {"capacity": 8192},
        }
        for name, proc in engines.items()
    ]
    tag = "-baseline" if baseline else ""
    # Each server keeps its own traces (one per task), as a lone server would.
    server = {"max_tracked_tasks": 200_000, "artifacts_dir": str(workdir / f"artifacts{tag}")}
    if baseline:
        server.update(BASELINE_SERVER)
    config = {"server": server, "pools": pools}
    path = workdir / f"orch{tag}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with contextlib.closing(__import__("socket").socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    env["BENCH_OPENAI_KEY"] = KEY
    if baseline:  # another tree's sources take the place of this one's
        env["PYTHONPATH"] = baseline
    command = [sys.executable, "-m", "llama_orch", "serve", "--config", str(path)]
    command += ["--bind", f"127.0.0.1:{port}"]
    if os.environ.get("BENCH_PROFILE"):  # a cProfile dump of the server, for finding hot spots
        command[1:1] = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]]
    log = (workdir / f"orch{tag}.log").open("wb")
    popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    return await_ready(url, popen, str(workdir / f"orch{tag}.log"))


@contextlib.contextmanager
def processes(workdir: Path) -> Iterator[dict[str, Proc]]:
    started: dict[str, Proc] = {}
    try:
        engines = {}
        for name, flags in ENGINES.items():
            engines[name] = started[name] = _start_fake(name, flags, workdir / f"{name}.log")
        started["orch"] = _start_orch(engines, workdir)
        if BASELINE:
            started["orch@baseline"] = _start_orch(engines, workdir, BASELINE)
        yield started
    finally:
        for proc in started.values():
            proc.popen.terminate()
        for proc in started.values():
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()


@dataclass
class Variant:
    """One way to an engine; ``orch`` is None for ``direct``."""

    name: str
    http: dict[str, LeanHttp1]
    orch: Proc | None
    tasks_api: bool = False
    errors: list[str] = field(default_factory=list)

    async def stream(self, engine: str, tokens: int) -> tuple[float, int, str, int, int]:
        """(seconds to the first token, tokens received, the prompt's marker, and when the
        request went out and its first token came back, in CLOCK_MONOTONIC ns)."""
        marker = uuid.uuid4().hex
        prompt = f"bench-{marker}"
        if self.tasks_api:
            path = "/v1/tasks"
            body: dict[str, Any] = {
                "task_id": str(uuid.uuid4()),
                "session_id": str(uuid.uuid4()),
                "workload": "completion",
                "model_ref": engine,
                "engine": "openai",
                "ctx": 4096,
                "priority": "interactive",
                "max_tokens": tokens,
                "deadline_ms": 600_000,
                "prompt": prompt,
                "seed": 1,
            }
            first_mark, count = b"event: token", _TOKENS_OUT
        else:
            path = "/v1/chat/completions"
            body = {
                "model": engine,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": tokens,
                "seed": 1,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            first_mark, count = b"", _USAGE
        start = time.monotonic_ns()
        first = 0
        tail = b""
        async with self.http[engine].stream("POST", path, body) as chunks:
            async for chunk in chunks:
                if not first and (
                    first_mark in chunk if first_mark else _CONTENT.search(chunk) is not None
                ):
                    first = time.monotonic_ns()
                tail = (tail + chunk)[-4096:]
        found = count.findall(tail)
        if not found:
            self.errors.append(tail[-200:].decode(errors="replace"))
            return float("nan"), 0, marker, start, 0
        return (first - start) / 1e9, int(found[-1]), marker, start, first


@dataclass
class Window:
    ttft_ms: list[float] = field(default_factory=list)
    #: Per task: (the prompt's marker, request sent, first token received), CLOCK_MONOTONIC ns.
    marks: list[tuple[str, int, int]] = field(default_factory=list)
    #: The same, for tasks other than each client's first in the window: the clients start
    #: a window together, and that burst of 64 admissions is a bench artifact, not a steady
    #: state.
    steady: list[tuple[str, int, int]] = field(default_factory=list)
    tokens: int = 0
    tasks: int = 0
    wall_s: float = 0.0
    engine_cpu_s: float = 0.0
    orch_cpu_s: float = 0.0

    def add(self, other: Window) -> None:
        self.ttft_ms += other.ttft_ms
        self.marks += other.marks
        self.steady += other.steady
        self.tokens += other.tokens
        self.tasks += other.tasks
        self.wall_s += other.wall_s
        self.engine_cpu_s += other.engine_cpu_s
        self.orch_cpu_s += other.orch_cpu_s


async def _window(
    v: Variant, procs: dict[str, Proc], engine: str, clients: int, tokens: int, *, seconds: float
) -> Window:
    """``clients`` closed-loop clients for ``seconds`` (at least one task each)."""
    out = Window()
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        started = False
        while True:
            ttft, got, marker, sent, first = await v.stream(engine, tokens)
            out.ttft_ms.append(ttft * 1000)
            if first:
                out.marks.append((marker, sent, first))
                if started:
                    out.steady.append((marker, sent, first))
            started = True
            out.tokens += got
            out.tasks += 1
            if time.perf_counter() >= stop_at:
                return

    orch = v.orch or procs["orch"]
    e0, o0 = procs[engine].cpu_s(), orch.cpu_s()
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    out.wall_s = time.perf_counter() - start
    out.engine_cpu_s = procs[engine].cpu_s() - e0
    # The server's background work (probes) runs in every window; it is charged to its tasks
    # only when they went through it.
    out.orch_cpu_s = orch.cpu_s() - o0 if v.orch is not None else 0.0
    return out


_MARKER = re.compile(r"bench-([0-9a-f]{32})")


def _engine_ttfts(workdir: Path, engine: str) -> dict[str, int]:
    """Each prompt marker's time to first token inside the engine (request read to first
    token sent, ns), from the fake's ``--timings`` file."""
    out = {}
    path = _timings_path(workdir, engine)
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        record = json.loads(line)
        found = _MARKER.search(json.dumps(record["body"]))
        if found:
            out[found.group(1)] = record["first_ns"] - record["received_ns"]
    return out


def _outside_engine_ms(marks: list[tuple[str, int, int]], inside: dict[str, int]) -> list[float]:
    """Per task, the client's time to first token less the engine's own part of it: the
    hops, queues and loops on the way there and back, without the engine's own spikes."""
    return [
        (first - sent - inside[marker]) / 1e6 for marker, sent, first in marks if marker in inside
    ]


def _added(values: dict[str, list[float]], name: str) -> str:
    if name == "direct":
        return "-"
    p50, p99 = (pct(values[name], q) - pct(values["direct"], q) for q in (0.5, 0.99))
    return f"{p50:+.1f} / {p99:+.1f}"


def _rows(
    windows: dict[str, Window], rates: dict[str, list[float]], inside: dict[str, int]
) -> list[Row]:
    base = windows["direct"]
    base50, base99 = pct(base.ttft_ms, 0.5), pct(base.ttft_ms, 0.99)
    outside = {name: _outside_engine_ms(w.marks, inside) for name, w in windows.items()}
    steady = {name: _outside_engine_ms(w.steady, inside) for name, w in windows.items()}
    base_rate = statistics.median(rates["direct"])
    engine_direct = base.engine_cpu_s / max(1, base.tasks) * 1000
    rows = []
    for name, w in windows.items():
        tasks = max(1, w.tasks)
        p50, p99 = pct(w.ttft_ms, 0.5), pct(w.ttft_ms, 0.99)
        rate = statistics.median(rates[name])
        orch_ms = w.orch_cpu_s / tasks * 1000
        rows.append(
            {
                "variant": name,
                "tasks": str(w.tasks),
                "TTFT p50 / p99 ms": f"{p50:.1f} / {p99:.1f}",
                "added p50 / p99 ms": "-"
                if name == "direct"
                else f"{p50 - base50:+.1f} / {p99 - base99:+.1f}",
                "added outside engine p50 / p99": _added(outside, name),
                "the same, steady": _added(steady, name),
                "tokens/s": f"{rate:,.0f}",
                "x direct": f"{rate / base_rate:.2f}",
                "engine CPU ms/task": f"{w.engine_cpu_s / tasks * 1000:.2f}",
                "orch CPU ms/task": "-" if name == "direct" else f"{orch_ms:.2f}",
                "orch / engine CPU": "-" if name == "direct" else f"{orch_ms / engine_direct:.2f}",
            }
        )
    return rows


async def _scenario(
    vs: list[Variant],
    procs: dict[str, Proc],
    workdir: Path,
    engine: str,
    clients: int,
    tokens: int,
    seconds: float,
    rounds: int,
) -> list[Row]:
    windows = {v.name: Window() for v in vs}
    rates: dict[str, list[float]] = {v.name: [] for v in vs}
    for _ in range(rounds):
        for v in vs:
            w = await _window(v, procs, engine, clients, tokens, seconds=seconds)
            windows[v.name].add(w)
            rates[v.name].append(w.tokens / w.wall_s)
    return _rows(windows, rates, _engine_ttfts(workdir, engine))


async def paced_c64(vs: list[Variant], procs: dict[str, Proc], workdir: Path) -> list[Row]:
    """64 closed-loop clients x 128 tokens, engine at 5 ms per token."""
    return await _scenario(vs, procs, workdir, "paced", 64, 128, 3.0 * SCALE, max(2, n(3)))


async def paced_c1(vs: list[Variant], procs: dict[str, Proc], workdir: Path) -> list[Row]:
    """One client x 64 tokens, engine at 5 ms per token."""
    return await _scenario(vs, procs, workdir, "paced", 1, 64, 4.0 * SCALE, max(2, n(3)))


async def fastest_c32(vs: list[Variant], procs: dict[str, Proc], workdir: Path) -> list[Row]:
    """32 closed-loop clients x 256 tokens, engine unpaced (one frame per write)."""
    return await _scenario(vs, procs, workdir, "fast", 32, 256, 2.0 * SCALE, max(2, n(3)))


SCENARIOS = [
    ("c=64 closed loop x 128 tokens, 5 ms/token", paced_c64),
    ("c=1 x 64 tokens, 5 ms/token", paced_c1),
    ("c=32 closed loop x 256 tokens, fastest engine", fastest_c32),
]


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def run(workdir: Path) -> None:
    with processes(workdir) as procs:
        auth = {"Authorization": f"Bearer {KEY}"}
        direct = {name: LeanHttp1(procs[name].url, headers=auth) for name in ENGINES}
        vs = [Variant("direct", direct, None)]
        for key in ("orch", "orch@baseline"):
            if key not in procs:
                continue
            proc, tag = procs[key], key.removeprefix("orch")
            vs.append(Variant(f"orch/chat{tag}", {e: LeanHttp1(proc.url) for e in ENGINES}, proc))
            tasks = {e: LeanHttp1(proc.url, accept="text/event-stream") for e in ENGINES}
            vs.append(Variant(f"orch/tasks{tag}", tasks, proc, tasks_api=True))
        try:
            for v in vs:  # warm-up: connections, imports, first-call caches
                for engine in ENGINES:
                    await asyncio.gather(*(v.stream(engine, 8) for _ in range(8)))
            only = os.environ.get("BENCH_ONLY", "")
            for title, scenario in SCENARIOS:
                if only and scenario.__name__ not in only.split(","):
                    continue
                started = time.perf_counter()
                load0 = _load()
                rows = await scenario(vs, procs, workdir)
                took = time.perf_counter() - started
                print(f"### {title}\n\n{table(rows)}", flush=True)
                print(f"({took:.1f} s; load average before {load0}, after {_load()})\n")
            for v in vs:
                if v.errors:
                    print(f"{v.name}: {len(v.errors)} streams failed, e.g. {v.errors[0]!r}")
        finally:
            for v in vs:
                for http in v.http.values():
                    await http.aclose()


def main() -> None:
    print(f"scale {SCALE}; cpus {os.cpu_count()}; python {sys.version.split()[0]}", flush=True)
    runner = loop_runner()
    keep = os.environ.get("BENCH_WORKDIR")  # keep the config and the server's log there
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        runner(run(Path(keep)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        runner(run(Path(tmp)))
