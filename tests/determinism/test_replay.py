"""Determinism: the committed corpus replays byte-exact on every deterministic engine path.

For the mock engine and each fake engine (a real subprocess speaking the engine's wire
protocol), the corpus runs on a pool of two replicas, again with micro-batched frames, and again
after the server restarts. Every run must stream the same bytes, token by token, per case. The
outputs are recorded with the engine version, sampler profile and model digest the server
reports (under ``$LLORCH_PROOF_DIR/determinism/`` when set, for proof bundles).

A real llama.cpp replays the same corpus in ``tests/real`` (``make test-real``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import SIMULATED_GPUS

CORPUS = json.loads((Path(__file__).parent / "corpus.json").read_text(encoding="utf-8"))["cases"]
ENGINES = ["mock", "llamacpp", "vllm", "tgi", "openai", "triton"]
MODEL = "det-model"
UPSTREAM_KEY = "sk-determinism-0123456789abcdef"
#: Streams read at once: enough to keep both replicas busy, few enough for two shared cores.
PARALLEL = 16


@dataclass(frozen=True)
class Stream:
    """One case's stream as the client read it: token texts per frame and their indices."""

    texts: tuple[str, ...]
    indices: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def text(self) -> str:
        return "".join(self.texts)


@contextlib.contextmanager
def fake_engine(kind: str) -> Iterator[str]:
    """Start the fake engine of ``kind`` as a subprocess; yield its URL."""
    command = [sys.executable, "-m", "llama_orch.testing.fake_engines", kind, "--port", "0"]
    command += ["--model", MODEL]
    if kind == "llamacpp":
        command += ["--slots", "4"]
    if kind == "openai":
        command += ["--api-key", UPSTREAM_KEY]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    with process.stdout:
        try:
            yield process.stdout.readline().strip()
        finally:
            process.terminate()
            process.wait(timeout=10)


def pool_config(kind: str, url: str | None, artifacts: Path) -> dict[str, Any]:
    pool: dict[str, Any] = {
        "id": "det",
        "engine": kind,
        "model": MODEL,
        "ctx": 4096,
        "devices": [0],
        "slots": 2,
        "replicas": 2,
    }
    if kind == "mock":
        pool["mock"] = {"ttft_ms": 0, "tokens_per_s": 20_000.0}
    else:
        pool["endpoint"] = url
        pool["provisioning"] = {"mode": "external"}
        pool["backoff"] = {"initial_ms": 1, "max_ms": 10}
        if kind == "openai":
            pool["api_key_env"] = "UPSTREAM_KEY"
    return {"gpus": SIMULATED_GPUS, "pools": [pool], "server": {"artifacts_dir": str(artifacts)}}


def wait_ready(url: str) -> dict[str, Any]:
    """Wait (bounded) until both replicas are Ready; return the pool's capabilities entry."""
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            health = client.get("/v1/pools/det/health").json()
            states = [r["state"] for r in health["metrics"]["replicas"]]
            if states == ["ready", "ready"]:
                caps = client.get("/v1/capabilities").json()
                return dict(next(p for p in caps["pools"] if p["pool_id"] == "det"))
            time.sleep(0.05)
    raise AssertionError(f"pool det never became ready: {health}")


async def _one(
    client: httpx.AsyncClient,
    kind: str,
    case: dict[str, Any],
    batched: bool,
    overrides: Mapping[str, Any],
) -> Any:
    body: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "session_id": str(uuid.uuid4()),
        "workload": "completion",
        "model_ref": MODEL,
        "engine": kind,
        "ctx": 4096,
        "priority": "batch",
        "max_tokens": case["max_tokens"],
        "deadline_ms": 600_000,
        "prompt": case["prompt"],
        "seed": case["seed"],
        "determinism": "strict",
    }
    if "sampling" in case:
        body["sampling"] = case["sampling"]
    body.update(overrides)
    admitted = await client.post("/v1/tasks", json=body)
    assert 202 == admitted.status_code, admitted.text
    params = {"microbatch": "true"} if batched else {"microbatch": "false"}
    texts: list[str] = []
    indices: list[int] = []
    counts: list[int] = []
    url = f"/v1/tasks/{body['task_id']}/stream"
    async with aconnect_sse(client, "GET", url, params=params) as source:
        async for sse in source.aiter_sse():
            data = orjson.loads(sse.data)
            if sse.event == "token":
                texts.append(data["t"])
                indices.append(data["i"])
                counts.append(data.get("n", 1))
            elif sse.event == "error":
                raise AssertionError(f"case seed {case['seed']} ended with {data}")
    return body["task_id"], Stream(tuple(texts), tuple(indices), tuple(counts))


async def _run(
    url: str, kind: str, batched: bool, overrides: Mapping[str, Any], parallel: int
) -> tuple[list[str], list[Stream]]:
    gate = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def bounded(case: dict[str, Any]) -> Any:
            async with gate:
                return await _one(client, kind, case, batched, overrides)

        results = await asyncio.gather(*(bounded(case) for case in CORPUS))
    return [r[0] for r in results], [r[1] for r in results]


def run_corpus(
    server: ServeProcess,
    kind: str,
    *,
    batched: bool,
    overrides: Mapping[str, Any] | None = None,
    parallel: int = PARALLEL,
) -> tuple[list[str], list[Stream]]:
    """Every case once; ``overrides`` replace fields of each task body (model, placement)."""
    return asyncio.run(_run(server.url, kind, batched, overrides or {}, parallel))


def first_difference(label: str, case: dict[str, Any], want: Stream, got: Stream) -> str:
    """Where two streams of one case part: the first differing token (or byte, if batched)."""
    if want.counts == got.counts or set(want.counts) == set(got.counts) == {1}:
        for index, (a, b) in enumerate(zip(want.texts, got.texts, strict=False)):
            if a != b:
                return f"{label}: seed {case['seed']}: token {index}: {a!r} != {b!r}"
    a, b = want.text.encode(), got.text.encode()
    at = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    return (
        f"{label}: seed {case['seed']}: byte {at}: {a[at : at + 24]!r} != {b[at : at + 24]!r} "
        f"({len(want.texts)} vs {len(got.texts)} frames)"
    )


def check_frames(stream: Stream) -> None:
    """Indices start at 0 and each frame's index counts the tokens before it."""
    expected, seen = [], 0
    for count in stream.counts:
        expected.append(seen)
        seen += count
    assert expected == list(stream.indices)


def replicas_of(log: Path, task_ids: list[str]) -> dict[str, str]:
    """Which replica served each task, from the server's ``place`` log lines."""
    wanted, served = set(task_ids), {}
    for line in log.read_text(encoding="utf-8").splitlines():
        if '"place"' not in line:
            continue
        event = json.loads(line)
        if event.get("event") == "place" and event.get("task_id") in wanted:
            served[event["task_id"]] = event["replica_id"]
    return served


def record(kind: str, pool: dict[str, Any], runs: dict[str, list[Stream]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "engine": kind,
        "engine_version": pool["engine_version"],
        "sampler_profile_version": pool.get("sampler_profile_version"),
        "model_id": pool.get("model_id"),
        "model_digest": pool.get("model_digest"),
        "simulated": pool.get("simulated"),
        "cases": [
            {
                **case,
                **{
                    name: {"text": run[i].text, "tokens": sum(run[i].counts)}
                    for name, run in runs.items()
                },
            }
            for i, case in enumerate(CORPUS)
        ],
    }
    (out / f"{kind}.json").write_text(json.dumps(document, ensure_ascii=False, indent=1))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ENGINES)
def test_corpus_replays_byte_exact(kind: str, tmp_path: Path) -> None:
    """Two replicas, micro-batch on and off, and a server restart all stream the same bytes."""
    assert len(CORPUS) >= 64
    env = {"UPSTREAM_KEY": UPSTREAM_KEY}
    with contextlib.ExitStack() as stack:
        url = None if kind == "mock" else stack.enter_context(fake_engine(kind))
        config = pool_config(kind, url, tmp_path / "artifacts")
        (tmp_path / "first").mkdir()
        (tmp_path / "restarted").mkdir()
        with serve_process(config, tmp_path / "first", environ=env) as first:
            pool = wait_ready(first.url)
            task_ids, plain = run_corpus(first, kind, batched=False)
            _, batched = run_corpus(first, kind, batched=True)
        served = replicas_of(first.log_path, task_ids)
        with serve_process(config, tmp_path / "restarted", environ=env) as second:
            wait_ready(second.url)
            _, restarted = run_corpus(second, kind, batched=False)
    out = Path(os.environ.get("LLORCH_PROOF_DIR", tmp_path)) / "determinism"
    record(kind, pool, {"plain": plain, "microbatch": batched, "restarted": restarted}, out)

    differences = [
        first_difference(label, case, plain[i], other[i])
        for label, other in (("micro-batch", batched), ("restart", restarted))
        for i, case in enumerate(CORPUS)
        if plain[i].text != other[i].text or sum(plain[i].counts) != sum(other[i].counts)
    ]
    assert [] == differences, "\n".join(differences[:10])
    for stream in (*plain, *batched, *restarted):
        check_frames(stream)
    assert all(set(s.counts) == {1} for s in plain + restarted)
    assert any(max(s.counts) > 1 for s in batched), "micro-batching never merged a frame"
    assert {"r0", "r1"} == set(served.values()), served


class TestFirstDifference:
    def test_names_the_first_differing_token(self) -> None:
        """Unbatched streams that part are reported at the first token that differs."""
        want = Stream(("a", "b", "c"), (0, 1, 2), (1, 1, 1))
        got = Stream(("a", "x", "c"), (0, 1, 2), (1, 1, 1))
        message = first_difference("restart", {"seed": 5}, want, got)
        assert "restart: seed 5: token 1: 'b' != 'x'" == message

    def test_names_the_first_differing_byte_across_framings(self) -> None:
        """A batched stream is compared with an unbatched one byte by byte."""
        want = Stream(("ab", "c"), (0, 1), (1, 1))
        got = Stream(("abd",), (0,), (2,))
        assert "byte 2: b'c' != b'd'" in first_difference("micro-batch", {"seed": 5}, want, got)
