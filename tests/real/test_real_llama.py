"""llama-orch against a real llama.cpp ``llama-server`` (a CPU build: simulated, protocol only).

Two llama-server processes serve the tiny GGUF of ``tests/real/tiny_model.py``, each attached
as an ``external`` pool of one ``llorch serve``. Over the task API: a short haiku-style task
streams ``started -> token* -> end``; the determinism corpus streams the same bytes twice on one
engine and again on the other; a running task canceled after its first token stops the engine
and frees its slot. Opt-in: ``make test-real`` (see docs/testing.md).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families

from llama_orch.adapters._prom import gauge_value
from tests.determinism.test_replay import CORPUS, check_frames, first_difference, record, run_corpus
from tests.real.conftest import MODEL, RealRun
from tests.real.tiny_model import CONTEXT
from tests.support.server import task_body

pytestmark = pytest.mark.real_llama

Frames = list[tuple[str, dict[str, Any]]]
#: Tokens asked of the task that is canceled: all the context the prompt leaves.
LONG = CONTEXT - 64


def pinned(pool_id: str) -> dict[str, Any]:
    return {
        "model_ref": MODEL,
        "engine": "llamacpp",
        "placement": {"mode": "pin", "pin_pool_id": pool_id, "allow_fallback": False},
    }


def submit(client: httpx.Client, pool_id: str, prompt: str, max_tokens: int, seed: int) -> str:
    body = task_body(
        MODEL,
        prompt=prompt,
        max_tokens=max_tokens,
        seed=seed,
        ctx=CONTEXT,
        deadline_ms=600_000,
        determinism="strict",
        **pinned(pool_id),
    )
    admitted = client.post("/v1/tasks", json=body)
    assert 202 == admitted.status_code, admitted.text
    return str(body["task_id"])


def read_frames(client: httpx.Client, task_id: str) -> Frames:
    with connect_sse(client, "GET", f"/v1/tasks/{task_id}/stream", timeout=60.0) as source:
        return [(sse.event, orjson.loads(sse.data)) for sse in source.iter_sse()]


def tokens(frames: Frames) -> list[dict[str, Any]]:
    return [data for event, data in frames if event == "token"]


def engine_props(url: str) -> dict[str, Any]:
    props: dict[str, Any] = httpx.get(f"{url}/props", timeout=5, trust_env=False).json()
    return props


def engine_slots(url: str) -> list[dict[str, Any]]:
    slots: list[dict[str, Any]] = httpx.get(f"{url}/slots", timeout=5, trust_env=False).json()
    return slots


def decode_calls(url: str) -> int:
    """``llamacpp:n_decode_total``: one decode per prompt batch and per generated token."""
    text = httpx.get(f"{url}/metrics", timeout=5, trust_env=False).text
    value = gauge_value(text, "llamacpp:n_decode_total")
    assert value is not None, text
    return int(value)


def pool_counters(scrape: str, pool_id: str) -> dict[str, float]:
    """The server's ``*_total`` samples of one pool, summed over its replicas."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("pool_id") == pool_id:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def test_haiku_streams_started_tokens_end(real_run: RealRun) -> None:
    """A short task streams started, 24 tokens with consecutive indices, then end with the
    engine's counts; capabilities and the server's metrics show the pool, labelled simulated."""
    with httpx.Client(base_url=real_run.server.url, timeout=30) as client:
        task_id = submit(client, "real-a", "Write a haiku about GPUs.", 24, 7)
        frames = read_frames(client, task_id)
        caps = client.get("/v1/capabilities").json()
        scrape = client.get("/metrics").text
    events = [event for event, _ in frames]
    assert "started" == events[0] and "end" == events[-1], events
    assert set(events[1:-1]) <= {"token", "metrics"}, events
    started, end = frames[0][1], frames[-1][1]
    build = engine_props(real_run.engines["real-a"])["build_info"]
    assert ("real-a", True, build) == (
        started["pool_id"],
        started.get("simulated"),
        started.get("engine_version"),
    )
    streamed = tokens(frames)
    assert list(range(24)) == [t["i"] for t in streamed]
    assert all(t["t"] for t in streamed)
    assert (24, None) == (end["tokens_out"], end.get("canceled"))
    assert end["tokens_in"] > 0
    pool = next(p for p in caps["pools"] if p["pool_id"] == "real-a")
    assert (True, build) == (pool["simulated"], pool["engine_version"])
    counted = pool_counters(scrape, "real-a")
    assert counted["tokens_out_total"] >= 24 and counted["tokens_in_total"] >= end["tokens_in"]
    text = "".join(t["t"] for t in streamed)
    print(f"\nreal llama.cpp {build} (CPU build, simulated) wrote: {text!r}")


@pytest.mark.timeout(600)
def test_corpus_replays_byte_exact_on_both_engines(real_run: RealRun, tmp_path: Path) -> None:
    """The corpus streams the same bytes twice on one llama-server, once more there with
    micro-batched frames, and once on the other llama-server."""
    url = real_run.server.url

    def corpus_on(pool_id: str, *, batched: bool = False) -> Any:
        overrides = pinned(pool_id)
        return run_corpus(
            real_run.server, "llamacpp", batched=batched, overrides=overrides, parallel=4
        )[1]

    first, again = corpus_on("real-a"), corpus_on("real-a")
    batched, other = corpus_on("real-a", batched=True), corpus_on("real-b")
    caps = httpx.get(f"{url}/v1/capabilities", timeout=10).json()
    pool = next(p for p in caps["pools"] if p["pool_id"] == "real-a")
    runs = {"first": first, "again": again, "microbatch": batched, "other_engine": other}
    out = Path(os.environ.get("LLORCH_PROOF_DIR", tmp_path)) / "determinism"
    record("llamacpp-real", pool, runs, out)
    differences = [
        first_difference(label, case, first[i], run[i])
        for label, run in runs.items()
        for i, case in enumerate(CORPUS)
        if first[i].text != run[i].text or sum(first[i].counts) != sum(run[i].counts)
    ]
    assert [] == differences, "\n".join(differences[:10])
    for stream in (*first, *again, *batched, *other):
        check_frames(stream)
    assert all(set(s.counts) == {1} for s in first + again + other)
    # The tiny model cannot sample EOS: every case runs to its max_tokens.
    assert [c["max_tokens"] for c in CORPUS] == [sum(s.counts) for s in first]
    assert len({s.text for s in first}) > len(CORPUS) // 2, "the seeds barely matter"
    print(f"\n{len(CORPUS)} cases x 4 runs byte-exact; outputs in {out / 'llamacpp-real.json'}")


def test_cancel_stops_the_engine_and_frees_its_slot(real_run: RealRun) -> None:
    """Canceled after its first token, a long task ends canceled, the engine stops decoding
    short of its budget, its slot is idle, and the next task on it runs to completion."""
    engine = real_run.engines["real-b"]
    before = decode_calls(engine)
    with httpx.Client(base_url=real_run.server.url, timeout=30) as client:
        task_id = submit(client, "real-b", "Count the stars, slowly.", LONG, 11)
        frames: Frames = []
        stream = f"/v1/tasks/{task_id}/stream"
        with connect_sse(client, "GET", stream, timeout=60.0) as source:
            events = source.iter_sse()
            for sse in events:
                frames.append((sse.event, orjson.loads(sse.data)))
                if sse.event == "token":
                    break
            assert 204 == client.post(f"/v1/tasks/{task_id}/cancel").status_code
            frames.extend((sse.event, orjson.loads(sse.data)) for sse in events)
        event, end = frames[-1]
        assert ("end", True) == (event, end.get("canceled")), frames[-3:]
        streamed = tokens(frames)
        assert 0 < len(streamed) == end["tokens_out"] < LONG
        assert list(range(len(streamed))) == [t["i"] for t in streamed]

        deadline = time.monotonic() + 20
        while any(s["is_processing"] for s in engine_slots(engine)):
            assert time.monotonic() < deadline, json.dumps(engine_slots(engine))
            time.sleep(0.05)
        assert decode_calls(engine) - before < LONG

        after = submit(client, "real-b", "Write a haiku about queues.", 8, 12)
        assert 8 == read_frames(client, after)[-1][1]["tokens_out"]
