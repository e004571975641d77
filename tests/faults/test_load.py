"""Load on the production server stack (``llorch serve`` as a subprocess, loopback only):
1,000 concurrent streams with a tenth of the readers stalled, and an admission burst of ten
times the queue's capacity."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import SIMULATED_GPUS, mock_pool, task_body

STREAMS = 1_000
STALLED = STREAMS // 10
#: The server process may grow with the load, but not without bound.
RSS_LIMIT_MB = 1024


def rss_mb(server: ServeProcess) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def config(tmp_path: Path, pool: dict[str, Any], **server: Any) -> dict[str, Any]:
    server = {"artifacts_dir": str(tmp_path / "artifacts"), **server}
    return {"gpus": SIMULATED_GPUS, "pools": [pool], "server": server}


async def read_stream(port: int, task_id: str) -> bytes:
    """A minimal HTTP/1.1 reader: the whole stream, up to its terminal frame."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/tasks/{task_id}/stream HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    data = b""
    try:
        while b"event: end\n" not in data and b"event: error\n" not in data:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
    return data


def stalled_reader(port: int, task_id: str) -> socket.socket:
    """A client that asks for the stream and then never reads a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /v1/tasks/{task_id}/stream HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return sock


async def admit_all(client: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> list[int]:
    gate = asyncio.Semaphore(64)

    async def one(body: dict[str, Any]) -> int:
        async with gate:
            return (await client.post("/v1/tasks", json=body)).status_code

    return list(await asyncio.gather(*(one(b) for b in bodies)))


async def settled(client: httpx.AsyncClient, timeout_s: float = 60) -> dict[str, Any]:
    """Wait (bounded) until the pool holds no lease and queues nothing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health: dict[str, Any] = (await client.get("/v1/pools/p0/health")).json()
        if health["active_leases"] == 0 and health["metrics"]["queue_depth"] == 0:
            return health
        await asyncio.sleep(0.1)
    raise AssertionError(f"the pool never settled: {health}")


class TestConcurrentStreams:
    @pytest.mark.timeout(240)
    async def test_stalled_readers_do_not_hold_back_the_others(self, tmp_path: Path) -> None:
        """With 1,000 streams at once and 100 readers that never read, the 900 others read to
        their end, every task ends (stalled ones finish into socket buffers or are dropped by
        the stall limit), the server's memory stays bounded and it keeps serving."""
        pool = mock_pool(
            "p0",
            "m0",
            slots=256,
            queue={"capacity": STREAMS},
            mock={"ttft_ms": 0, "tokens_per_s": 2000.0},
        )
        sse = {"stall_limit_ms": 1000}
        with serve_process(config(tmp_path, pool, sse=sse), tmp_path) as srv:
            port = int(srv.url.rsplit(":", 1)[1])
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as client:
                bodies = [
                    task_body(max_tokens=200 if n < STALLED else 8, deadline_ms=600_000)
                    for n in range(STREAMS)
                ]
                statuses = await admit_all(client, bodies)
                assert [202] * STREAMS == statuses
                stalled = [stalled_reader(port, b["task_id"]) for b in bodies[:STALLED]]
                try:
                    streams = await asyncio.gather(
                        *(read_stream(port, b["task_id"]) for b in bodies[STALLED:])
                    )
                    health = await settled(client)
                    peak_mb = rss_mb(srv)
                    fresh = task_body(max_tokens=2, session_id=str(uuid.uuid4()))
                    again = (await client.post("/v1/tasks", json=fresh)).status_code
                    tail = await read_stream(port, fresh["task_id"])
                finally:
                    for sock in stalled:
                        sock.close()
        complete = [s for s in streams if s.count(b"event: token\n") == 8 and b"event: end\n" in s]
        assert STREAMS - STALLED == len(complete)
        assert (0, 0) == (health["active_leases"], health["metrics"]["queue_depth"])
        assert peak_mb < RSS_LIMIT_MB
        assert 202 == again and b"event: end\n" in tail


class TestSaturation:
    async def test_a_burst_of_ten_times_capacity(self, tmp_path: Path) -> None:
        """Exactly the queue's capacity is admitted behind a busy slot; every other request is
        429 with Retry-After and X-Backoff-Ms; nothing is a 5xx."""
        capacity = 20
        pool = mock_pool(
            "p0",
            "m0",
            queue={"capacity": capacity, "full_policy": "reject"},
            mock={"ttft_ms": 0, "tokens_per_s": 50.0},
        )
        with serve_process(config(tmp_path, pool), tmp_path) as srv:
            limits = httpx.Limits(max_connections=256)
            async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as client:
                blocker = task_body(max_tokens=4000, ctx=4096)
                assert 202 == (await client.post("/v1/tasks", json=blocker)).status_code
                deadline = time.monotonic() + 30
                while (await client.get("/v1/pools/p0/health")).json()["active_leases"] < 1:
                    assert time.monotonic() < deadline, "the blocker never started"
                    await asyncio.sleep(0.02)
                burst = [task_body(max_tokens=1, deadline_ms=600_000) for _ in range(capacity * 10)]
                answers = await asyncio.gather(*(client.post("/v1/tasks", json=b) for b in burst))
                peak_mb = rss_mb(srv)
        statuses = [a.status_code for a in answers]
        refused = [a for a in answers if a.status_code == 429]
        assert capacity == statuses.count(202)
        assert capacity * 9 == len(refused)
        assert [] == [s for s in statuses if s >= 500]
        assert all(
            int(a.headers["retry-after"]) >= 1 and int(a.headers["x-backoff-ms"]) >= 0
            for a in refused
        )
        assert {"ADMISSION_REJECT"} == {a.json()["code"] for a in refused}
        assert peak_mb < RSS_LIMIT_MB
