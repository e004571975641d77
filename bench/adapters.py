"""Adapter decode throughput: tokens/s parsed through each adapter vs reading the stream raw.

``python -m bench adapters`` (``BENCH_SCALE=0.2`` for a quick pass). For every engine kind it
starts the fake engine in a subprocess streaming as fast as it can, then alternates two readers
over the same requests and the same pooled httpx client:

- ``raw``: the same upstream client (``UpstreamClients.open_stream``: ``H1Pool`` for these plain
  HTTP/1.1 fakes), every chunk read and nothing parsed (the physical limit);
- ``adapter``: ``adapter.submit(...)``, the path the server relays through: SSE decode,
  JSON parse, error checks, the tokens of each upstream read as one event (``submit``, one event
  per token, is the same stream unpacked by one more generator).

Two framings are measured: one HTTP chunk per event, as real engines write (llama.cpp, vLLM and
TGI flush each token), and 64 events per chunk, which makes raw reading nearly free and so
isolates the adapter's parsing cost.

Both produce the same (deterministic) tokens, so tokens/s = tokens / wall time of the round.
The ratio adapter/raw is what to read (target >= 0.7): on a small machine the fake engine
competes with the reader for CPU, which lowers both numbers alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from llama_orch.adapters._base import HttpAdapter
from llama_orch.adapters.registry import AdapterContext, build_adapter
from llama_orch.config import PoolConfig
from llama_orch.contracts.engine import GenerateRequest

HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}

SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
KINDS = ("llamacpp", "vllm", "tgi", "triton", "openai")
MODELS = {"triton": "vllm_model"}
KEY = "sk-bench-0000000000"
TOKENS = 2000  # per stream (fits every fake's context)
STREAMS = int(os.environ.get("BENCH_STREAMS", "4"))  # concurrent streams per round
ROUNDS = max(1, int(5 * SCALE))


@dataclass
class Result:
    kind: str
    tokens: int
    adapter_s: float
    raw_s: float
    #: CPU time of this (reading) process per token: what the adapter itself costs.
    adapter_cpu_us: float
    raw_cpu_us: float

    @property
    def adapter_tps(self) -> float:
        return self.tokens / self.adapter_s

    @property
    def raw_tps(self) -> float:
        return self.tokens / self.raw_s


@contextlib.contextmanager
def fake_engine(kind: str, batch: int) -> Iterator[str]:
    args = [sys.executable, "-m", "llama_orch.testing.fake_engines", kind, "--port", "0"]
    args += ["--batch", str(batch)]
    if kind == "llamacpp":
        args += ["--slots", str(STREAMS)]
    if kind == "openai":
        args += ["--api-key", KEY]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"fake {kind} did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def adapter_for(kind: str, url: str) -> HttpAdapter:
    pool = PoolConfig.model_validate(
        {
            "id": f"bench-{kind}",
            "engine": kind,
            "model": MODELS.get(kind, "tiny"),
            "endpoint": url,
            "provisioning": {"mode": "external"},
        }
    )
    adapter = build_adapter(pool, 0, AdapterContext(api_keys={pool.id: KEY}))
    assert isinstance(adapter, HttpAdapter)
    return adapter


def requests(round_no: int) -> list[GenerateRequest]:
    return [
        GenerateRequest(
            task_id=f"r{round_no}-{i}",
            prompt=f"benchmark prompt {i}",
            max_tokens=TOKENS,
            model="tiny",
            seed=i,
            temperature=0.8,
        )
        for i in range(STREAMS)
    ]


async def via_adapter(adapter: HttpAdapter, batch: list[GenerateRequest]) -> tuple[int, float]:
    async def one(request: GenerateRequest) -> int:
        count = 0
        async for event in adapter.submit(request):
            if event.kind == "tokens":
                count += len(event.texts)
        return count

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(r) for r in batch))
    return sum(counts), time.perf_counter() - start


async def raw(adapter: HttpAdapter, batch: list[GenerateRequest]) -> float:
    """The same requests through the same upstream client the adapter streams with."""
    upstream = adapter.upstream

    async def one(request: GenerateRequest) -> int:
        path, body = adapter.generate_call(request)
        size = 0
        response = await upstream.open_stream(path, orjson.dumps(body), HEADERS)
        try:
            async for chunk in response.chunks:
                size += len(chunk)
        finally:
            await response.close()
        return size

    start = time.perf_counter()
    await asyncio.gather(*(one(r) for r in batch))
    return time.perf_counter() - start


async def measure(kind: str, url: str) -> Result:
    adapter = adapter_for(kind, url)
    try:
        await adapter.props()  # what the pool manager does before Ready (Triton's inputs)
        await via_adapter(adapter, requests(-1))  # warm connections and caches
        best_adapter = best_raw = cpu_adapter = cpu_raw = float("inf")
        tokens = 0
        for round_no in range(ROUNDS):
            batch = requests(round_no)
            cpu = time.process_time()
            tokens, adapter_s = await via_adapter(adapter, batch)
            cpu_adapter = min(cpu_adapter, (time.process_time() - cpu) / tokens * 1e6)
            cpu = time.process_time()
            raw_s = await raw(adapter, batch)
            cpu_raw = min(cpu_raw, (time.process_time() - cpu) / tokens * 1e6)
            best_adapter = min(best_adapter, adapter_s)
            best_raw = min(best_raw, raw_s)
        return Result(kind, tokens, best_adapter, best_raw, cpu_adapter, cpu_raw)
    finally:
        await adapter.aclose()


def run_loop(coro: object) -> Result:
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    return runner(coro)  # type: ignore[arg-type]


#: Framings: how many events the fake writes per HTTP chunk when streaming as fast as it can.
FRAMINGS = {
    "per-token chunks (as engines write)": 1,
    "64 events per chunk (stresses parsing)": 64,
}


def main() -> None:
    print(
        f"{STREAMS} concurrent streams x {TOKENS} tokens, best of {ROUNDS} rounds; "
        "fake engines as fast as possible, one subprocess each",
        flush=True,
    )
    for framing, batch in FRAMINGS.items():
        print(f"\n-- {framing}")
        header = (
            f"{'adapter':<10} {'adapter tok/s':>14} {'raw tok/s':>12} {'ratio':>7}"
            f" {'reader CPU us/token (adapter / raw)':>37}"
        )
        print(header)
        print("-" * len(header))
        for kind in KINDS:
            with fake_engine(kind, batch) as url:
                result = run_loop(measure(kind, url))
            ratio = result.adapter_tps / result.raw_tps
            cpu = f"{result.adapter_cpu_us:.2f} / {result.raw_cpu_us:.2f}"
            print(
                f"{kind:<10} {result.adapter_tps:>14,.0f} {result.raw_tps:>12,.0f} {ratio:>7.2f}"
                f" {cpu:>37}",
                flush=True,
            )


if __name__ == "__main__":
    main()
