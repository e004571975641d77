"""The streaming hot path end to end: micro-batch, heartbeat, cancel on disconnect, stalls,
back-pressure drops, transcript retention, a cancel stress test, and HTTP/1.1 against HTTP/2 on
the production server stack (``llorch serve`` in a subprocess)."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from llama_orch.cli.serve import SHUTDOWN_DEADLINE_S
from llama_orch.server.app import create_app
from llama_orch.testing.fake_engines import Behaviour, start_fake
from tests.faults._raw import connect, read_until_closed, status_of
from tests.support.serve_process import serve_process
from tests.support.server import (
    SIMULATED_GPUS,
    RunningServer,
    config_of,
    mock_pool,
    running_server,
    sse_events,
    task_body,
)

FAST = {"ttft_ms": 0, "tokens_per_s": 5000}


def parse(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event, payload) per frame; comment lines become ("comment", {})."""
    frames: list[tuple[str, dict[str, Any]]] = []
    for block in body.split(b"\n\n"):
        if not block:
            continue
        if block.startswith(b":"):
            frames.append(("comment", {}))
            continue
        event_line, data_line = block.split(b"\n")
        frames.append((event_line.removeprefix(b"event: ").decode(), orjson.loads(data_line[6:])))
    return frames


async def wait_for(predicate: Any, what: str, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def task_of(srv: RunningServer, task_id: str) -> Any:
    return srv.task(task_id)


def counter(srv: RunningServer, name: str, labels: dict[str, str]) -> float:
    value = srv.deps.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def canceled_total(srv: RunningServer, reason: str) -> float:
    return sum(
        sample.value
        for metric in srv.deps.metrics.registry.collect()
        if metric.name == "tasks_canceled"
        for sample in metric.samples
        if sample.name == "tasks_canceled_total" and sample.labels["reason"] == reason
    )


class AsgiClient:
    """Drives the app's stream endpoint directly, with a send the test controls."""

    def __init__(self, srv: RunningServer) -> None:
        self.app = create_app(srv.deps)
        self.messages: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.block_from: int | None = None

    async def _send(self, message: dict[str, Any]) -> None:
        if self.block_from is not None and len(self.messages) >= self.block_from:
            await self.release.wait()
        self.messages.append(message)

    async def _receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def stream(self, task_id: str) -> None:
        path = f"/v1/tasks/{task_id}/stream"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        await self.app(scope, self._receive, self._send)  # type: ignore[arg-type]

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages)


class TestMicroBatch:
    async def test_microbatch_keeps_the_token_sequence(self) -> None:
        """With micro-batch on, frames carry t, i and n, and the text equals the plain mode's."""
        texts = {}
        for mode in (False, True):
            config = config_of(
                mock_pool(mock=FAST),
                server={"sse": {"microbatch": mode, "microbatch_max_tokens": 8}},
            )
            async with running_server(config) as srv:
                body = task_body(max_tokens=60, seed=5)
                await srv.submit(body)
                frames = await srv.stream(body["task_id"])
            tokens = [d for e, d in frames if e == "token"]
            texts[mode] = "".join(d["t"] for d in tokens)
            if mode:
                counts = [d["n"] for d in tokens]
                assert 60 == sum(counts) and max(counts) <= 8
                assert [d["i"] for d in tokens] == [sum(counts[:k]) for k in range(len(counts))]
            else:
                assert [d["i"] for d in tokens] == list(range(60))
                assert all("n" not in d for d in tokens)
            assert 60 == frames[-1][1]["tokens_out"]
        assert texts[False] == texts[True]

    async def test_microbatch_from_the_environment(self) -> None:
        """ORCHD_SSE_MICROBATCH=true turns it on without a config change."""
        environ = {"ORCHD_SSE_MICROBATCH": "true"}
        async with running_server(config_of(mock_pool(mock=FAST)), environ) as srv:
            body = task_body(max_tokens=10)
            await srv.submit(body)
            frames = await srv.stream(body["task_id"])
        assert all("n" in d for e, d in frames if e == "token")

    async def test_pool_override_turns_microbatch_on(self) -> None:
        """pools[].sse.microbatch turns it on for that pool while the server default is off."""
        pool = mock_pool(mock=FAST, sse={"microbatch": True, "microbatch_max_tokens": 4})
        async with running_server(config_of(pool)) as srv:
            body = task_body(max_tokens=12)
            await srv.submit(body)
            frames = await srv.stream(body["task_id"])
        counts = [d["n"] for e, d in frames if e == "token"]
        assert 12 == sum(counts) and max(counts) <= 4

    async def test_request_query_overrides_pool_and_server(self) -> None:
        """?microbatch=... picks this subscriber's mode over the pool's and the server's."""
        pool = mock_pool(mock=FAST, sse={"microbatch": True, "microbatch_max_tokens": 4})
        async with running_server(config_of(pool)) as srv:
            body = task_body(max_tokens=30, seed=9)
            await srv.submit(body)
            plain = await srv.stream(body["task_id"], params={"microbatch": "false"})
            # A late subscriber replays the transcript: same tokens, its own framing.
            merged = await srv.stream(
                body["task_id"], params={"microbatch": "on", "microbatch_max_tokens": "7"}
            )
        plain_tokens = [d for e, d in plain if e == "token"]
        assert [d["i"] for d in plain_tokens] == list(range(30))
        assert all("n" not in d for d in plain_tokens)
        counts = [d["n"] for e, d in merged if e == "token"]
        assert 30 == sum(counts) and max(counts) == 7
        text = "".join(d["t"] for d in plain_tokens)
        assert text == "".join(d["t"] for e, d in merged if e == "token")

    @pytest.mark.parametrize(
        "query",
        [
            {"microbatch": "maybe"},
            {"microbatch_max_tokens": "0"},
            {"microbatch_max_delay_ms": "5000"},
            {"micro_batch": "true"},
        ],
    )
    async def test_invalid_stream_query_is_a_400_envelope(self, query: dict[str, str]) -> None:
        async with running_server(config_of(mock_pool(mock=FAST))) as srv:
            body = task_body(max_tokens=3)
            await srv.submit(body)
            response = await srv.client.get(f"/v1/tasks/{body['task_id']}/stream", params=query)
            # The refusal subscribed nobody: a correct request still streams the task.
            frames = await srv.stream(body["task_id"])
        assert 400 == response.status_code
        envelope = response.json()
        assert "INVALID_PARAMS" == envelope["code"]
        assert next(iter(query)) in envelope["message"]
        assert "allowed: microbatch" in envelope["message"]
        assert "end" == frames[-1][0]


class TestHeartbeat:
    async def test_keepalive_while_queued(self) -> None:
        """A stream waiting in the queue carries keep-alive comments after started."""
        pool = mock_pool(mock={"hang_after_token": 0, "ttft_ms": 0})
        config = config_of(pool, server={"sse": {"heartbeat_ms": 20}})
        async with running_server(config) as srv:
            blocker, queued = task_body(), task_body()
            await srv.submit(blocker)
            await wait_for(lambda: task_of(srv, blocker["task_id"]).replica_id, "blocker runs")
            await srv.submit(queued)
            task = task_of(srv, queued["task_id"])
            body = b""
            # Cancel once three keep-alives came, not after a fixed time: a loaded machine
            # may open the stream late or write fewer comments in any given span.
            async with (
                asyncio.timeout(30),
                srv.client.stream("GET", f"/v1/tasks/{queued['task_id']}/stream") as r,
            ):
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if body.count(b": keep-alive\n\n") == 3:
                        assert task.replica_id is None  # still waiting in the queue
                        await srv.client.post(f"/v1/tasks/{queued['task_id']}/cancel")
        kinds = [e for e, _ in parse(body)]
        assert "started" == kinds[0] and "end" == kinds[-1]
        assert kinds.count("comment") >= 3
        assert parse(body)[0][1]["predicted_start_ms"] > 0


class TestCancelOnDisconnect:
    async def test_disconnect_is_not_a_cancel_when_turned_off(self) -> None:
        """With CANCEL_ON_DISCONNECT=false the task runs to its end after the client leaves."""
        pool = mock_pool(mock={"ttft_ms": 0, "tokens_per_s": 400})
        environ = {"CANCEL_ON_DISCONNECT": "false"}
        async with running_server(config_of(pool), environ) as srv:
            body = task_body(max_tokens=30)
            await srv.submit(body)
            async for event, _ in sse_events(srv.client, body["task_id"]):
                if event == "token":
                    break
            task = task_of(srv, body["task_id"])
            await wait_for(lambda: task.terminal, "the task ends")
            frames = await srv.stream(body["task_id"])
        assert "done" == task.state.value
        assert (30, None) == (frames[-1][1]["tokens_out"], frames[-1][1].get("canceled"))

    async def test_disconnect_counts_reason_disconnect(self) -> None:
        """A client leaving mid-stream cancels with reason disconnect and frees the slot."""
        pool = mock_pool(mock={"ttft_ms": 0, "tokens_per_s": 200})
        async with running_server(config_of(pool)) as srv:
            body = task_body(max_tokens=500)
            await srv.submit(body)
            async for event, _ in sse_events(srv.client, body["task_id"]):
                if event == "token":
                    break
            task = task_of(srv, body["task_id"])
            await wait_for(lambda: task.terminal, "the task ends")
            await wait_for(lambda: srv.deps.pools.get_active_leases("p0") == 0, "slot freed")
            assert "canceled" == task.state.value
            assert 1.0 == canceled_total(srv, "disconnect")

    async def test_disconnect_closes_the_upstream_engine_request(self) -> None:
        """A client leaving mid-stream closes the llama.cpp request upstream, promptly."""
        async with start_fake("llamacpp", behaviour=Behaviour(tokens_per_s=100)) as fake:
            pool = {
                "id": "cpp",
                "engine": "llamacpp",
                "model": fake.model,
                "ctx": 4096,
                "devices": [0],
                "slots": 2,
                "endpoint": fake.url,
                "provisioning": {"mode": "external"},
            }
            async with running_server(config_of(pool)) as srv:
                body = task_body(model=fake.model, engine="llamacpp", max_tokens=1000)
                await srv.submit(body)
                async for event, _ in sse_events(srv.client, body["task_id"]):
                    if event == "token":
                        break
                record = fake.requests[-1]
                # Promptly means before the engine's 10 s of tokens end (closed_early, not
                # completed below), not within a wall-clock bound a loaded machine may miss.
                await asyncio.wait_for(record.done.wait(), 30.0)
                task = task_of(srv, body["task_id"])
        assert (True, False) == (record.closed_early, record.completed)
        assert "canceled" == task.state.value


class TestStallAndBackpressure:
    async def test_stalled_client_cancels_its_task(self) -> None:
        """A client that accepts nothing for stall_limit_ms loses its task; the slot is freed."""
        pool = mock_pool(mock={"ttft_ms": 0, "tokens_per_s": 200})
        config = config_of(pool, server={"sse": {"stall_limit_ms": 80}})
        async with running_server(config) as srv:
            body = task_body(max_tokens=2000)
            await srv.submit(body)
            client = AsgiClient(srv)
            client.block_from = 2  # response start and started pass; then nothing moves
            await asyncio.wait_for(client.stream(body["task_id"]), 5.0)
            task = task_of(srv, body["task_id"])
            await wait_for(lambda: srv.deps.pools.get_active_leases("p0") == 0, "slot freed")
            assert "canceled" == task.state.value
            assert 1.0 == canceled_total(srv, "stall")
            assert False is task.subscribed

    async def test_slow_client_loses_metrics_never_tokens(self) -> None:
        """Behind by more than channel_cap, a client gets every token in order and fewer
        metrics frames; the drops are counted per pool."""
        # Half a second of tokens: metrics frames come at most once per interval, so a stream
        # a stalled loop sees in one burst would publish too few of them to overflow the cap.
        pool = mock_pool(mock={"ttft_ms": 0, "tokens_per_s": 400})
        sse = {"channel_cap": 4, "metrics_frame_interval_ms": 1}
        async with running_server(config_of(pool, server={"sse": sse})) as srv:
            body = task_body(max_tokens=200)
            await srv.submit(body)
            client = AsgiClient(srv)
            client.block_from = 2
            streaming = asyncio.create_task(client.stream(body["task_id"]))
            task = task_of(srv, body["task_id"])
            await wait_for(lambda: task.terminal, "the task ends")
            client.release.set()
            await asyncio.wait_for(streaming, 5.0)
            published = sum(1 for e, _ in task.frames() if e == "metrics")
            drops = counter(srv, "sse_backpressure_drops_total", {"pool_id": "p0"})
        frames = parse(client.body)
        tokens = [d for e, d in frames if e == "token"]
        assert list(range(200)) == [d["i"] for d in tokens]
        assert published > 4 and drops > 0
        assert published == drops + sum(1 for e, _ in frames if e == "metrics")
        assert "end" == frames[-1][0]


class TestTranscripts:
    async def test_retention_time_bound(self) -> None:
        """A finished transcript is served until transcript_retention_s, then it is gone."""
        config = config_of(server={"transcript_retention_s": 1})
        async with running_server(config) as srv:
            body = task_body(max_tokens=3)
            await srv.submit(body)
            first = await srv.stream(body["task_id"])
            await asyncio.sleep(1.05)
            response = await srv.client.get(f"/v1/tasks/{body['task_id']}/stream")
        assert "end" == first[-1][0]
        assert (404, "NOT_FOUND") == (response.status_code, response.json()["code"])

    async def test_retention_memory_bound_evicts_oldest(self) -> None:
        """Past transcript_max_bytes the oldest finished transcripts go first."""
        config = config_of(mock_pool(mock=FAST), server={"transcript_max_bytes": 3000})
        async with running_server(config) as srv:
            bodies = [task_body(max_tokens=12) for _ in range(6)]
            for body in bodies:
                await srv.submit(body)
                await srv.stream(body["task_id"])
            codes = []
            for body in bodies:
                response = await srv.client.get(f"/v1/tasks/{body['task_id']}/stream")
                codes.append(response.status_code)
        assert 404 == codes[0] and 200 == codes[-1]
        assert codes == sorted(codes, reverse=True)


class TestCancelStress:
    async def test_hundreds_of_cancels_racing_tokens(self) -> None:
        """240 streams canceled at a random token, half by POST and half by disconnect: no
        token ever follows the end frame, end counts exactly the tokens sent, every slot is
        freed."""
        pool = mock_pool(
            slots=8, ctx=8192, queue={"capacity": 512}, mock={"ttft_ms": 0, "tokens_per_s": 1000}
        )
        # Tokens come 1 ms apart, so each cancel races the next token; a stream far longer
        # than any cut (8 s of tokens) keeps a loaded machine's slow reader from seeing it
        # end first, so the count of canceled streams below does not depend on the load.
        max_tokens = 8000
        rng = random.Random(20261125)
        plan = [(rng.randint(1, 25), rng.random() < 0.5) for _ in range(240)]
        gate = asyncio.Semaphore(24)

        async def one(srv: RunningServer, cut: int, by_post: bool) -> tuple[str, int, bool]:
            async with gate:
                body = task_body(max_tokens=max_tokens, ctx=8192)
                assert 202 == (await srv.submit(body)).status_code
                seen = 0
                async for event, data in sse_events(srv.client, body["task_id"]):
                    if event == "token":
                        seen += 1
                        if seen == cut:
                            if not by_post:
                                break
                            url = f"/v1/tasks/{body['task_id']}/cancel"
                            assert 204 == (await srv.client.post(url)).status_code
                    elif event == "end":
                        # A cancel that lost the race to the last token changes nothing.
                        assert data.get("canceled") or max_tokens == data["tokens_out"]
                        assert seen == data["tokens_out"]
                return body["task_id"], seen, by_post

        config = config_of(pool)
        async with running_server(config) as srv:
            results = await asyncio.gather(*(one(srv, cut, post) for cut, post in plan))
            for task_id, _, _ in results:
                task = task_of(srv, task_id)
                await wait_for(lambda t=task: t.terminal, "every task ends")
            await wait_for(lambda: srv.deps.pools.get_active_leases("p0") == 0, "slots freed")
            canceled = 0
            for task_id, seen, _by_post in results:
                frames = task_of(srv, task_id).frames()
                kinds = [e for e, _ in frames]
                end = orjson.loads(frames[-1][1])
                assert ["end"] == [k for k in kinds if k in ("end", "error")]
                assert "end" == kinds[-1]
                assert end["tokens_out"] == kinds.count("token") >= seen
                canceled += bool(end.get("canceled"))
            assert canceled >= 200
            disconnects = canceled_total(srv, "disconnect")
            assert 0 < disconnects <= sum(1 for _, _, post in results if not post)


# -- the production server stack ------------------------------------------------------------


def serve_config(**server: Any) -> dict[str, Any]:
    pool = mock_pool(mock={"ttft_ms": 0, "tokens_per_s": 2000})
    return {"gpus": SIMULATED_GPUS, "server": server, "pools": [pool]}


async def read_stream(client: httpx.AsyncClient, task_id: str) -> tuple[str, bytes]:
    async with client.stream("GET", f"/v1/tasks/{task_id}/stream") as response:
        response.raise_for_status()
        return response.http_version, await response.aread()


def h2_client(url: str, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, http1=False, http2=True, timeout=10.0, **kw)


def h2_read_then_reset(port: int, path: str) -> None:
    """Open one HTTP/2 stream, read until a token arrives, then RST_STREAM it and linger
    (httpx closes an abandoned stream without a reset, so it cannot show this)."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        conn.initiate_connection()
        headers = [(":method", "GET"), (":path", path), (":scheme", "http")]
        conn.send_headers(1, [*headers, (":authority", "127.0.0.1")], end_stream=True)
        sock.sendall(conn.data_to_send())
        received = b""
        while b"event: token" not in received:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.DataReceived):
                    received += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
            sock.sendall(conn.data_to_send())
        conn.reset_stream(1)
        sock.sendall(conn.data_to_send())
        time.sleep(0.3)


def make_self_signed_cert(directory: Path) -> None:
    """cert.pem and key.pem for 127.0.0.1, valid for a day."""
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", "key.pem", "-out", "cert.pem", "-subj", "/CN=127.0.0.1"),
        ],
        cwd=directory,
        check=True,
        capture_output=True,
    )


class TestServerStack:
    async def test_http1_and_h2c_frames_are_identical(self, tmp_path: Path) -> None:
        """Over HTTP/1.1 and cleartext HTTP/2 the same task yields byte-identical streams,
        live and replayed, and the same headers (less the HTTP/1.1-only Connection)."""
        with serve_process(serve_config(), tmp_path) as srv:
            async with (
                httpx.AsyncClient(base_url=srv.url, timeout=10.0) as h1,
                h2_client(srv.url) as h2,
            ):
                live = {}
                replay = {}
                for name, client in (("h1", h1), ("h2", h2)):
                    body = task_body(max_tokens=40, seed=11, prompt="same prompt")
                    assert 202 == (await client.post("/v1/tasks", json=body)).status_code
                    version, data = await read_stream(client, body["task_id"])
                    live[name] = (version, [(e, d) for e, d in parse(data) if e == "token"])
                    replay[name] = body["task_id"]
                first = {}
                headers = {}
                for name, client in (("h1", h1), ("h2", h2)):
                    path = f"/v1/tasks/{replay['h1']}/stream"
                    async with client.stream("GET", path) as response:
                        first[name] = await response.aread()
                        headers[name] = dict(response.headers)
                headers1, headers2 = headers["h1"], headers["h2"]
        assert ("HTTP/1.1", "HTTP/2") == (live["h1"][0], live["h2"][0])
        assert live["h1"][1] == live["h2"][1] and 40 == len(live["h1"][1])
        assert first["h1"] == first["h2"]
        assert "end" == parse(first["h1"])[-1][0]
        for key in ("content-type", "cache-control", "x-accel-buffering"):
            assert headers1[key] == headers2[key]
        assert "keep-alive" == headers1.get("connection") and "connection" not in headers2

    async def test_h2_stream_reset_cancels_the_task(self, tmp_path: Path) -> None:
        """An HTTP/2 client resetting its stream (RST_STREAM, connection kept) cancels the
        task, as a closed HTTP/1.1 connection does."""
        config = serve_config()
        config["pools"][0]["mock"] = {"ttft_ms": 0, "tokens_per_s": 100}
        with serve_process(config, tmp_path) as srv:
            async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as h1:
                body = task_body(max_tokens=2000)
                await h1.post("/v1/tasks", json=body)
                port = int(srv.url.rsplit(":", 1)[1])
                path = f"/v1/tasks/{body['task_id']}/stream"
                await asyncio.to_thread(h2_read_then_reset, port, path)
                frames: list[tuple[str, dict[str, Any]]] = []
                for _ in range(300):
                    await asyncio.sleep(0.01)
                    async with h1.stream("GET", path) as r:
                        if r.status_code == 409:  # the first subscriber is still leaving
                            continue
                        frames = parse(await r.aread())
                    if frames[-1][0] == "end":
                        break
        assert True is frames[-1][1].get("canceled")
        assert frames[-1][1]["tokens_out"] < 2000

    async def test_h2_cancels_answer_cleanly(self, tmp_path: Path) -> None:
        """Over h2c every cancel gets its 204 on a stream the client can finish: the server
        reads the (empty) request to its end before answering, so no reset races it."""
        config = serve_config()
        config["pools"][0]["mock"] = {"ttft_ms": 0, "tokens_per_s": 100}
        with serve_process(config, tmp_path) as srv:
            async with httpx.AsyncClient(
                base_url=srv.url, timeout=10.0, http1=False, http2=True
            ) as h2:
                statuses: list[tuple[str, int]] = []

                async def admit_and_cancel() -> None:
                    for _ in range(8):
                        body = task_body(max_tokens=50)
                        admitted = await h2.post("/v1/tasks", json=body)
                        assert 202 == admitted.status_code, admitted.text
                        cancel = await h2.post(f"/v1/tasks/{body['task_id']}/cancel")
                        statuses.append((cancel.http_version, cancel.status_code))

                # Concurrent streams on one connection: where an early answer raced the reset.
                await asyncio.gather(*(admit_and_cancel() for _ in range(16)))
        assert {("HTTP/2", 204)} == set(statuses)
        assert 128 == len(statuses)

    async def test_sigterm_ends_open_streams_and_exits(self, tmp_path: Path) -> None:
        """SIGTERM ends every open stream, running or queued, with end canceled:true, and the
        process exits promptly instead of waiting for the streams to run out."""
        config = serve_config()
        config["pools"][0]["mock"] = {"ttft_ms": 0, "tokens_per_s": 5}
        with serve_process(config, tmp_path) as srv:
            async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as h1:
                running = task_body(max_tokens=500, deadline_ms=3_600_000)
                queued = task_body(max_tokens=500, deadline_ms=3_600_000)
                for body in (running, queued):
                    assert 202 == (await h1.post("/v1/tasks", json=body)).status_code
                ends = []
                for body in (running, queued):
                    async with h1.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as r:
                        async for line in r.aiter_lines():
                            if line.startswith("event: started") and body is queued:
                                srv.process.terminate()
                            if line.startswith("event: started") and body is running:
                                break
                            if line.startswith('data: {"tokens_out"'):
                                ends.append(orjson.loads(line[6:]))
                exit_code = await asyncio.to_thread(srv.process.wait, 10)
        assert [True] == [end.get("canceled") for end in ends]
        assert 0 == exit_code

    @pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
    async def test_tls_negotiates_h2_with_alpn(self, tmp_path: Path) -> None:
        """With server.tls, ALPN picks h2 for an HTTP/2 client and HTTP/1.1 for the rest."""
        make_self_signed_cert(tmp_path)
        config = serve_config(tls={"certfile": "cert.pem", "keyfile": "key.pem"})
        with serve_process(config, tmp_path, scheme="https") as srv:
            versions = []
            bodies = []
            async with (
                httpx.AsyncClient(base_url=srv.url, verify=False, timeout=10.0) as h1,
                httpx.AsyncClient(base_url=srv.url, verify=False, http2=True, timeout=10.0) as h2,
            ):
                body = task_body(max_tokens=5)
                await h1.post("/v1/tasks", json=body)
                for client in (h1, h2):
                    version, data = await read_stream(client, body["task_id"])
                    versions.append(version)
                    bodies.append(data)
        assert ["HTTP/1.1", "HTTP/2"] == versions
        assert bodies[0] == bodies[1] and b"event: end" in bodies[0]


class TestShutdown:
    async def test_sigterm_ends_open_streams_and_exits(self, tmp_path: Path) -> None:
        """On SIGTERM an open stream gets its end frame (canceled) and the server exits 0
        before its shutdown deadline, with the task's slot given back."""
        config = serve_config()
        config["pools"][0]["mock"] = {"ttft_ms": 0, "tokens_per_s": 20}
        with serve_process(config, tmp_path) as srv:
            async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
                body = task_body(max_tokens=2000)
                await client.post("/v1/tasks", json=body)
                data = b""
                async with client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as resp:
                    signaled = False
                    async for chunk in resp.aiter_bytes():
                        data += chunk
                        if b"event: token" in data and not signaled:
                            srv.process.terminate()
                            signaled = True
            code = await asyncio.to_thread(srv.process.wait, SHUTDOWN_DEADLINE_S)
        frames = parse(data)
        assert ("end", True) == (frames[-1][0], frames[-1][1].get("canceled"))
        tokens = [d for e, d in frames if e == "token"]
        assert len(tokens) == frames[-1][1]["tokens_out"]
        assert 0 == code

    async def test_a_task_sent_after_sigterm_is_refused_not_run(self, tmp_path: Path) -> None:
        """A POST /v1/tasks whose body reaches a stopping server is a retriable 503: it used to
        be admitted after the open tasks were ended, run on, and hold the exit until the
        shutdown deadline cut it with no terminal frame."""
        config = serve_config()
        config["pools"][0]["mock"] = {"ttft_ms": 0, "tokens_per_s": 20}
        late_body = orjson.dumps(task_body(max_tokens=2000))
        with serve_process(config, tmp_path) as srv:
            # The late request is on its way before the signal: headers now, the body after.
            late = connect(srv.url)
            late.sendall(
                b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n" % len(late_body)
            )
            async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client:
                body = task_body(max_tokens=2000)
                await client.post("/v1/tasks", json=body)
                data = b""
                async with client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as r:
                    async for chunk in r.aiter_bytes():
                        data += chunk
                        if b"event: started" in data and srv.process.returncode is None:
                            srv.process.terminate()
            # The open task was ended: the server is stopping. Now the late task arrives.
            late.sendall(late_body)
            answer = await asyncio.to_thread(read_until_closed, late)
            late.close()
            code = await asyncio.to_thread(srv.process.wait, SHUTDOWN_DEADLINE_S + 5)
            log = srv.log_path.read_text()
        assert ("end", True) == (parse(data)[-1][0], parse(data)[-1][1].get("canceled"))
        refused = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert (503, "POOL_UNAVAILABLE", True) == (
            status_of(answer),
            refused["code"],
            refused["retriable"],
        )
        assert "stopping" in refused["message"]
        assert "shutdown deadline" not in log
        assert 0 == code
