"""Embedding benchmark: ``/v1/embeddings`` of a fake vLLM engine, directly and through
llama-orch (admission, queue, batching runner, adapter, front door).

``python -m bench embeddings`` (``BENCH_SCALE=0.2`` for a quick pass). One fake vLLM server
(``llama_orch.testing.fake_engines vllm``, answering at once with hashed 32-dimension vectors)
and one ``llorch serve`` whose pool points at it, with ``embedding_batch: 64`` so a 64-text
request is one engine call on both paths:

- texts/s at concurrency 16 with 64-text requests (target: at least 0.9x direct);
- latency of a 1-text request at concurrency 1 (target: at most +2 ms p50).

Client, engine and server share the machine's CPUs, so ratios are what to read. Nothing here
is asserted by tests.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.frontdoor import _start_fake, _start_orch
from bench.streaming import LeanHttp1, Proc, Row, loop_runner, n, pct, table

SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
MODEL = "embed"
#: The same engine taking 20 ms per call, about what a GPU takes for a batch of 64 passages.
PACED = "embed-paced"
TEXTS = [
    f"a passage of about twenty words on rivers, stones and light, number {i}" for i in range(64)
]


async def _post(http: LeanHttp1, texts: list[str], model: str = MODEL) -> int:
    status, _ = await http.post("/v1/embeddings", {"model": model, "input": texts})
    if status != 200:
        raise RuntimeError(f"HTTP {status}")
    return len(texts)


async def throughput(variants: dict[str, LeanHttp1], model: str = MODEL) -> list[Row]:
    """Concurrency 16, each client sending 64-text requests back to back."""
    requests_each = n(20)
    rates: dict[str, list[float]] = {name: [] for name in variants}

    async def client(http: LeanHttp1) -> int:
        return sum([await _post(http, TEXTS, model) for _ in range(requests_each)])

    for _ in range(max(2, n(5))):
        for name, http in variants.items():
            start = time.perf_counter()
            done = await asyncio.gather(*(client(http) for _ in range(16)))
            rates[name].append(sum(done) / (time.perf_counter() - start))
    base = statistics.median(rates["direct"])
    return [
        {
            "variant": name,
            "texts/s (median)": f"{statistics.median(r):,.0f}",
            "x direct": "1.00" if name == "direct" else f"{statistics.median(r) / base:.2f}",
        }
        for name, r in rates.items()
    ]


async def paced_c16(variants: dict[str, LeanHttp1]) -> list[Row]:
    return await throughput(variants, PACED)


async def latency(variants: dict[str, LeanHttp1]) -> list[Row]:
    """Concurrency 1, one text per request, interleaved."""
    ms: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(n(300)):
        for name, http in variants.items():
            start = time.perf_counter()
            await _post(http, TEXTS[:1])
            ms[name].append((time.perf_counter() - start) * 1000)
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


async def run(workdir: Path) -> None:
    started: list[Proc] = []
    try:
        engine = _start_fake(MODEL, [], workdir / "engine.log")
        started.append(engine)
        paced = _start_fake(PACED, ["--ttft-ms", "20"], workdir / "paced.log")
        started.append(paced)
        orch = _start_orch(
            {MODEL: engine, PACED: paced},
            workdir,
            supported_workloads=["embedding"],
            embedding_batch=64,
            slots=16,
        )
        started.append(orch)
        variants = {"direct": LeanHttp1(engine.url), "orch": LeanHttp1(orch.url)}
        paced_variants = {"direct": LeanHttp1(paced.url), "orch": LeanHttp1(orch.url)}
        try:
            for http in variants.values():  # warm-up
                for _ in range(5):
                    await _post(http, TEXTS)
            for title, scenario in (
                ("Throughput, c=16 x 64-text requests, engine answers at once", throughput),
                ("Throughput, c=16 x 64-text requests, engine takes 20 ms a call", paced_c16),
                ("Added latency, c=1 x 1-text requests", latency),
            ):
                began = time.perf_counter()
                rows = await scenario(paced_variants if scenario is paced_c16 else variants)
                took = time.perf_counter() - began
                print(f"### {title}\n\n{table(rows)}", f"({took:.1f} s)\n", flush=True)
        finally:
            for http in [*variants.values(), *paced_variants.values()]:
                await http.aclose()
    finally:
        for proc in started:
            proc.popen.terminate()
            try:
                proc.popen.wait(timeout=10)
            except Exception:
                proc.popen.kill()


def main() -> None:
    print(f"scale {SCALE}; cpus {os.cpu_count()}; python {sys.version.split()[0]}", flush=True)
    runner = loop_runner()
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp:
        runner(run(Path(tmp)))
