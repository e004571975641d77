"""An operator reloading pools while tasks run and wait: what the waiting tasks, health and
metrics see across the switch (launched fake llama.cpp engines, simulated GPU inventory)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_pool_drain_reload import _state
from tests.faults.test_queue_races import every_enqueued_task_accounted, settled, terminal
from tests.support.engines import tiny_gguf
from tests.support.launched import (
    LaunchedSetup,
    launched_setup,
    llama_task,
    process_of,
    wait_health,
)
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import running_server


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[LaunchedSetup]:
    with launched_setup(tmp_path) as s:
        yield s


def _serves(model: Path) -> Any:
    return lambda health: health["model_id"] == str(model) and health["ready"]


class TestReloadWithQueuedTasks:
    async def test_tasks_queued_for_the_old_model_end_at_the_switch(
        self, setup: LaunchedSetup
    ) -> None:
        """A task still queued when the pool switches to the new model can never run there: it
        ends with a retriable POOL_UNAVAILABLE, and does not hold up the new model's tasks
        queued behind it."""
        new_model = tiny_gguf(setup.tmp / "models2", "tiny-next")
        pool = setup.pool(slots=1, env={"FAKE_ENGINE_TOKENS_PER_S": "20"})
        async with running_server(setup.config(pool)) as server:
            await wait_health(server, "lp", lambda h: h["ready"])
            running = llama_task(setup.model, max_tokens=400)
            queued = llama_task(setup.model, max_tokens=4)
            assert 202 == (await server.submit(running)).status_code
            await _state(server, running["task_id"], "running")
            assert 202 == (await server.submit(queued)).status_code
            await _state(server, queued["task_id"], "queued")
            response = await server.client.post(
                "/v1/pools/lp/reload", json={"new_model_ref": str(new_model)}
            )
            assert 202 == response.status_code
            await wait_health(server, "lp", _serves(new_model))
            frames = await asyncio.wait_for(server.stream(queued["task_id"]), 10)
            assert ("error", "POOL_UNAVAILABLE", True) == (
                frames[-1][0],
                frames[-1][1]["code"],
                frames[-1][1]["retriable"],
            )
            assert str(new_model) in frames[-1][1]["message"]
            after = llama_task(new_model, max_tokens=3)
            assert 202 == (await server.submit(after)).status_code
            frames = await asyncio.wait_for(server.stream(after["task_id"]), 10)
            assert "end" == frames[-1][0]


class TestReloadArrivals:
    def test_a_task_for_the_model_a_reload_brings_is_told_to_retry(
        self, setup: LaunchedSetup
    ) -> None:
        """While a reload starts the pool's new model, a task for that model finds no pool
        serving it yet: a retriable 503 POOL_UNREADY naming the reload, not the non-retriable
        'no pool serves' that tells a client to give up on a model about to be served."""
        new_model = tiny_gguf(setup.tmp / "models2", "tiny-next")
        pool = setup.pool(env={"FAKE_ENGINE_LOAD_MS": "2000"})
        with (
            _serving(setup, pool) as server,
            httpx.Client(base_url=server.url, timeout=10.0) as client,
        ):
            body = {"new_model_ref": str(new_model)}
            assert 202 == client.post("/v1/pools/lp/reload", json=body).status_code
            # The new engine takes 2 s to load: the pool still serves the old model.
            early = client.post("/v1/tasks", json=llama_task(new_model, max_tokens=2))
            for _ in range(800):
                if client.get("/v1/pools/lp/health").json()["model_id"] == str(new_model):
                    break
                time.sleep(0.05)
            later = client.post("/v1/tasks", json=llama_task(new_model, max_tokens=2))
        error = early.json()
        assert (503, "POOL_UNREADY", True) == (early.status_code, error["code"], error["retriable"])
        assert "reloading" in error["message"] and str(new_model) in error["message"]
        assert str(max(1, -(-error["retry_after_ms"] // 1000))) == early.headers["retry-after"]
        assert 202 == later.status_code, later.text


def _done(health: dict[str, Any]) -> bool:
    return (health.get("last_operation") or {}).get("state") in ("done", "rolled_back")


async def _models_seen(client: httpx.AsyncClient) -> tuple[str, str, str]:
    """The model pool lp serves, as capabilities, status and health say, in that order."""
    caps = (await client.get("/v1/capabilities")).json()["pools"][0]["model_id"]
    status = (await client.get("/v1/status")).json()["pool"]["pools"][0]["model"]
    health = (await client.get("/v1/pools/lp/health")).json()["model_id"]
    return caps, status, health


class TestReloadWithAFullQueue:
    async def test_the_switch_is_seen_once_and_every_task_is_accounted(
        self, setup: LaunchedSetup
    ) -> None:
        """Reload while a task runs and the queue is full: each of capabilities, status and
        health names the old model, then the new one, never the old again; the queued tasks
        end with a retriable POOL_UNAVAILABLE at the switch, the running one is canceled on the
        old replica; then nothing is queued or leased and every enqueued task is counted."""
        new_model = tiny_gguf(setup.tmp / "models2", "tiny-next")
        full = {"capacity": 2, "full_policy": "reject"}
        pool = setup.pool(slots=1, env={"FAKE_ENGINE_TOKENS_PER_S": "20"}, queue=full)
        with _serving(setup, pool) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                # 20 s of tokens: the slot stays taken until the switch, whatever the load.
                running = llama_task(setup.model, max_tokens=400, deadline_ms=600_000)
                queued = [llama_task(setup.model, max_tokens=2, deadline_ms=600_000) for _ in "ab"]
                for body in (running, *queued):
                    assert 202 == (await client.post("/v1/tasks", json=body)).status_code
                over = llama_task(setup.model, max_tokens=2, deadline_ms=600_000)
                assert 429 == (await client.post("/v1/tasks", json=over)).status_code
                reload = {"new_model_ref": str(new_model)}
                assert 202 == (await client.post("/v1/pools/lp/reload", json=reload)).status_code
                seen = [await _models_seen(client)]
                canceled = False
                while not _done((await client.get("/v1/pools/lp/health")).json()):
                    assert len(seen) < 2000, "the reload never ended"
                    seen.append(await _models_seen(client))
                    if seen[-1][2] == str(new_model) and not canceled:
                        # Switched: the old replica's stream need not run out its 20 s.
                        cancel = await client.post(f"/v1/tasks/{running['task_id']}/cancel")
                        canceled = 204 == cancel.status_code
                    await asyncio.sleep(0.02)
                seen.append(await _models_seen(client))
                ends = [await terminal(client, body["task_id"]) for body in (running, *queued)]
                scrape = await settled(client, "lp")
        old = str(setup.model)
        for view in range(3):
            names = [models[view] for models in seen]
            switched = names.index(str(new_model))
            assert {old} >= set(names[:switched]) and {str(new_model)} == set(names[switched:])
        assert ("end", True) == (ends[0][0], ends[0][1].get("canceled"))
        for event, data in ends[1:]:
            assert ("error", "POOL_UNAVAILABLE", True) == (event, data["code"], data["retriable"])
        every_enqueued_task_accounted(scrape)


#: Gauges with a replica_id label: a replica a reload stopped must not leave them behind.
REPLICA_GAUGES = (
    "pool_restart_backoff_seconds",
    "pool_restart_storm",
    "gpu_utilization",
    "vram_used_bytes",
    "kv_cache_usage_ratio",
)


def _replica_gauges(scrape: str, replica_id: str) -> list[str]:
    return [
        line
        for line in scrape.splitlines()
        if line.startswith(REPLICA_GAUGES) and f'replica_id="{replica_id}"' in line
    ]


class TestReloadMetrics:
    async def test_a_rolled_back_reload_leaves_no_storm_behind(self, setup: LaunchedSetup) -> None:
        """The new replica of a failed reload tripped the storm breaker and was stopped: its
        gauges go with it, so no restart storm is reported while the pool serves."""
        broken = setup.tmp / "broken.gguf"
        broken.write_bytes(b"GGUF\x09\x00\x00\x00")  # a GGUF version no engine reads
        config = setup.config(restart_storm={"failures": 2, "window_s": 60})
        async with running_server(config) as server:
            await wait_health(server, "lp", lambda h: h["ready"])
            response = await server.client.post(
                "/v1/pools/lp/reload", json={"new_model_ref": str(broken)}
            )
            assert 202 == response.status_code
            health = await wait_health(server, "lp", _done)
            assert "rolled_back" == health["last_operation"]["state"]
            scrape = (await server.client.get("/metrics")).text
            assert [] == _replica_gauges(scrape, "r0-g1")
            assert 'pool_restart_storm{pool_id="lp",replica_id="r0"} 0.0' in scrape

    async def test_a_reload_drops_the_replaced_replicas_gauges(self, setup: LaunchedSetup) -> None:
        """After the switch the old replica is stopped and forgotten: its per-replica gauges
        are removed rather than left frozen at their last values; the new replica's remain."""
        new_model = tiny_gguf(setup.tmp / "models2", "tiny-next")
        async with running_server(setup.config()) as server:
            await wait_health(server, "lp", lambda h: h["ready"])
            before = (await server.client.get("/metrics")).text
            assert _replica_gauges(before, "r0")
            response = await server.client.post(
                "/v1/pools/lp/reload", json={"new_model_ref": str(new_model)}
            )
            assert 202 == response.status_code
            assert "done" == (await wait_health(server, "lp", _done))["last_operation"]["state"]
            scrape = (await server.client.get("/metrics")).text
            assert [] == _replica_gauges(scrape, "r0")
            assert 'pool_restart_storm{pool_id="lp",replica_id="r0-g1"} 0.0' in scrape


def _serve_config(setup: LaunchedSetup, *pools: dict[str, Any], **engines: Any) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(
        setup.config(*pools, **engines).model_dump_json(exclude_none=True, exclude_unset=True)
    )
    return config


@contextlib.contextmanager
def _serving(setup: LaunchedSetup, pool: dict[str, Any]) -> Iterator[ServeProcess]:
    """``llorch serve`` of ``pool`` in a folder of its own, once the pool is Ready."""
    workdir = setup.tmp / "serve"
    workdir.mkdir()
    with serve_process(_serve_config(setup, pool), workdir) as server:
        _engine_pid(server.url)
        yield server


def _engine_pid(url: str) -> int:
    """The pid of pool lp's engine once the pool is Ready."""
    with httpx.Client(base_url=url, timeout=5.0) as client:
        for _ in range(800):
            health = client.get("/v1/pools/lp/health").json()
            if health["ready"]:
                pid: int = health["metrics"]["replicas"][0]["process"]["pid"]
                return pid
            time.sleep(0.05)
    raise AssertionError(f"pool lp never turned Ready: {health}")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class TestRunDir:
    def test_a_second_server_on_the_same_run_dir_leaves_the_first_ones_engines_alone(
        self, setup: LaunchedSetup
    ) -> None:
        """A second ``llorch serve`` of the same config (another port) would take the running
        server's engines for orphans and kill them: it refuses to start, naming the run dir.
        Once the first server is SIGKILLed, a new one starts and stops its orphaned engine."""
        config = _serve_config(setup)
        first_dir, second_dir, third_dir = (setup.tmp / name for name in ("a", "b", "c"))
        for workdir in (first_dir, second_dir, third_dir):
            workdir.mkdir()
        with serve_process(config, first_dir) as first:
            engine = _engine_pid(first.url)
            with (
                pytest.raises(RuntimeError, match=r"engines\.run_dir") as refused,
                serve_process(config, second_dir),
            ):
                pass
            assert str(first.process.pid) in str(refused.value)
            assert _alive(engine)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait()
            assert _alive(engine)  # orphaned: its server is gone
            with serve_process(config, third_dir) as third:
                assert _engine_pid(third.url) != engine
                assert not _alive(engine)
                assert os.path.exists(setup.tmp / "run" / "pids" / "lp-r0.pid")


def _probes(log: Path, pid: int) -> int:
    """Health probes the engine ``pid`` answered, from its FAKE_ENGINE_HEALTH_LOG."""
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if line.split(" ", 1)[0] == str(pid))


async def _answered_probes(log: Path, pid: int, count: int, timeout_s: float = 30.0) -> None:
    """Wait (bounded) until the engine ``pid`` answered ``count`` health probes in all."""
    deadline = time.monotonic() + timeout_s
    while _probes(log, pid) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"engine {pid} answered {_probes(log, pid)} of {count} probes: stopped?"
            )
        await asyncio.sleep(0.05)


class TestRetiredModel:
    async def test_retiring_the_served_model_does_not_kill_its_engine(
        self, setup: LaunchedSetup
    ) -> None:
        """Retired, the model closes the pool's catalog gate: the pool turns Unready, but its
        engine still answers its health checks. It is not killed as hung (nor restarted, nor
        counted toward the storm breaker): the running stream ends normally, and activating
        the model again makes the same engine Ready."""
        probes = setup.tmp / "probes.log"
        env = {"FAKE_ENGINE_TOKENS_PER_S": "20", "FAKE_ENGINE_HEALTH_LOG": str(probes)}
        async with running_server(setup.config(setup.pool(env=env))) as server:
            health = await wait_health(server, "lp", lambda h: h["ready"])
            pid = process_of(health)["pid"]
            running = llama_task(setup.model, max_tokens=40)
            assert 202 == (await server.submit(running)).status_code
            await _state(server, running["task_id"], "running")
            stream = asyncio.create_task(server.stream(running["task_id"]))
            state = f"/v1/catalog/models/file:{setup.model}/state"
            retired = await server.client.post(state, json={"state": "Retired"})
            assert 202 == retired.status_code
            await wait_health(server, "lp", lambda h: "Retired" in (h["last_error"] or ""))
            assert "end" == (await asyncio.wait_for(stream, 20))[-1][0]
            # Probes of the closed gate, counted by the engine itself, well past
            # hang_after_failed_probes (3): an engine taken for hung is stopped before then.
            await _answered_probes(probes, pid, _probes(probes, pid) + 6)
            health = (await server.client.get("/v1/pools/lp/health")).json()
            assert (pid, 0) == (process_of(health)["pid"], process_of(health)["restarts"])
            assert 202 == (await server.client.post(state, json={"state": "Active"})).status_code
            health = await wait_health(server, "lp", lambda h: h["ready"])
            assert (pid, 0) == (process_of(health)["pid"], health["restart_count"])

    async def test_retiring_drains_its_pools_within_the_deadline(
        self, setup: LaunchedSetup
    ) -> None:
        """A retired model's pools drain: a task queued on them ends at once with
        MODEL_DEPRECATED (it could not start before the model came back), and with
        ``deadline_ms`` a task still running then is stopped; the request used to accept
        ``deadline_ms`` and do nothing with it, leaving the queued task to wait out its own."""
        pool = setup.pool(slots=1, env={"FAKE_ENGINE_TOKENS_PER_S": "10"})
        async with running_server(setup.config(pool)) as server:
            await wait_health(server, "lp", lambda h: h["ready"])
            running = llama_task(setup.model, max_tokens=200)
            queued = llama_task(setup.model, max_tokens=2)
            assert 202 == (await server.submit(running)).status_code
            await _state(server, running["task_id"], "running")
            assert 202 == (await server.submit(queued)).status_code
            stream = asyncio.create_task(server.stream(running["task_id"]))
            state = f"/v1/catalog/models/file:{setup.model}/state"
            retired = await server.client.post(state, json={"state": "Retired", "deadline_ms": 300})
            waited = await asyncio.wait_for(server.stream(queued["task_id"]), 10)
            ran = await asyncio.wait_for(stream, 10)
        assert 202 == retired.status_code
        assert ("error", "MODEL_DEPRECATED") == (waited[-1][0], waited[-1][1]["code"])
        assert "retired" in waited[-1][1]["message"]
        assert ("end", True) == (ran[-1][0], ran[-1][1].get("canceled"))
        assert ran[-1][1]["tokens_out"] < 200


class TestShutdownDuringReload:
    def test_sigterm_while_the_old_engine_stops_leaves_no_engine_running(
        self, setup: LaunchedSetup
    ) -> None:
        """SIGTERM to the server right after a reload switched, while the replaced engine
        (slow to shut down) is being stopped: the server still ends that engine before it
        exits, instead of leaving it holding its GPU until the next start."""
        setup.faults.write_text("ignore_sigterm")
        new_model = tiny_gguf(setup.tmp / "models2", "tiny-next")
        workdir = setup.tmp / "serve"
        workdir.mkdir()
        # The grace an engine gets to exit on SIGTERM outlasts the server's own shutdown.
        config = _serve_config(setup, stop_timeout_ms=60_000)
        with serve_process(config, workdir) as server:
            old = _engine_pid(server.url)
            setup.faults.write_text("")
            with httpx.Client(base_url=server.url, timeout=5.0) as client:
                body = {"new_model_ref": str(new_model)}
                assert 202 == client.post("/v1/pools/lp/reload", json=body).status_code
                for _ in range(800):
                    if client.get("/v1/pools/lp/health").json()["model_id"] == str(new_model):
                        break
                    time.sleep(0.02)
            new = _engine_pid(server.url)
            assert _alive(old)  # told to stop, and still running
            server.process.send_signal(signal.SIGTERM)
            assert 0 == server.process.wait(timeout=30)
            assert not _alive(new)
            assert not _alive(old)


def _hangup_disposition(pid: int) -> tuple[bool, bool]:
    """Whether process ``pid`` ignores SIGHUP, and whether it catches it (/proc status)."""
    masks = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("SigIgn", "SigCgt"):
            masks[name] = int(value.strip(), 16)
    bit = 1 << (signal.SIGHUP - 1)
    return bool(masks["SigIgn"] & bit), bool(masks["SigCgt"] & bit)


class TestHangup:
    def test_sighup_stops_the_server_and_its_engines(self, setup: LaunchedSetup) -> None:
        """Closing the terminal (or the SSH session) that runs ``llorch serve`` sends SIGHUP:
        the server stops as on SIGTERM, its engines with it, rather than dying at once and
        leaving them running (holding their GPUs) until the next start."""
        workdir = setup.tmp / "serve"
        workdir.mkdir()
        with serve_process(_serve_config(setup), workdir) as server:
            engine = _engine_pid(server.url)
            server.process.send_signal(signal.SIGHUP)
            assert 0 == server.process.wait(timeout=30)
            assert not _alive(engine)
            assert not (setup.tmp / "run" / "pids" / "lp-r0.pid").exists()

    def test_under_nohup_sighup_is_ignored(self, tmp_path: Path) -> None:
        """``nohup llorch serve`` asks to outlive the terminal: SIGHUP changes nothing."""
        config: dict[str, Any] = {
            "gpus": {"simulated": [{"index": 0, "name": "sim", "vram_mb": 1024}]},
            "pools": [{"id": "p0", "engine": "mock", "model": "m0"}],
        }

        def nohup() -> None:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

        with serve_process(config, tmp_path, preexec_fn=nohup) as server:
            # The kernel discards a signal its receiver ignores when it is sent: with SIGHUP
            # still ignored (not caught) once the server runs, the one sent next cannot stop it.
            assert (True, False) == _hangup_disposition(server.process.pid)
            server.process.send_signal(signal.SIGHUP)
            with httpx.Client(base_url=server.url, timeout=5.0) as client:
                assert 200 == client.get("/v1/capabilities").status_code
            assert server.process.poll() is None


class TestRestartStorm:
    async def test_tasks_queued_when_the_storm_breaker_opens_end(
        self, setup: LaunchedSetup
    ) -> None:
        """Once the pool's only replica stopped restarting, nothing can start a queued task
        before a reload: it ends with a retriable POOL_UNREADY naming the storm, as a new
        submission is refused, instead of waiting out its deadline."""
        pool = setup.pool(slots=1, env={"FAKE_ENGINE_TOKENS_PER_S": "20"})
        config = setup.config(pool, restart_storm={"failures": 2, "window_s": 60})
        async with running_server(config) as server:
            health = await wait_health(server, "lp", lambda h: h["ready"])
            running = llama_task(setup.model, max_tokens=400)
            queued = llama_task(setup.model, max_tokens=4, deadline_ms=600_000)
            assert 202 == (await server.submit(running)).status_code
            await _state(server, running["task_id"], "running")
            assert 202 == (await server.submit(queued)).status_code
            await _state(server, queued["task_id"], "queued")
            setup.faults.write_text("exit_at_start")
            os.kill(process_of(health)["pid"], signal.SIGKILL)
            frames = await asyncio.wait_for(server.stream(running["task_id"]), 10)
            assert ("error", True) == (frames[-1][0], frames[-1][1]["retriable"])
            frames = await asyncio.wait_for(server.stream(queued["task_id"]), 10)
            assert ("error", "POOL_UNREADY", True) == (
                frames[-1][0],
                frames[-1][1]["code"],
                frames[-1][1]["retriable"],
            )
            assert "restart storm" in frames[-1][1]["message"]


class TestReloadRefs:
    @pytest.mark.parametrize(
        "ref",
        ["m" * 5000 + ".gguf", "/models/" + "d/" * 3000 + "x.gguf", "~no-such-user-here/x.gguf"],
        ids=["name-too-long", "path-too-long", "unknown-home"],
    )
    async def test_a_model_path_that_cannot_be_looked_up_is_a_400(
        self, setup: LaunchedSetup, ref: str
    ) -> None:
        """A path the operating system refuses to look up (a name longer than it allows, the
        home folder of a user that does not exist) is a model that is not there: a 400 naming
        the problem, never a 500; the pool keeps serving."""
        async with running_server(setup.config()) as server:
            await wait_health(server, "lp", lambda h: h["ready"])
            response = await server.client.post("/v1/pools/lp/reload", json={"new_model_ref": ref})
            assert (400, "INVALID_PARAMS") == (response.status_code, response.json()["code"])
            assert "cannot reload pool lp" in response.json()["message"]
            health = (await server.client.get("/v1/pools/lp/health")).json()
            assert (True, None) == (health["ready"], health["last_operation"])


class TestDeviceMasks:
    @pytest.mark.parametrize(
        ("devices", "says"),
        [("[]", "at least one GPU"), ("[0, 0]", "more than once")],
        ids=["empty", "repeated"],
    )
    def test_a_mask_that_names_no_gpu_or_one_twice_is_refused(
        self, tmp_path: Path, devices: str, says: str
    ) -> None:
        """An empty mask would launch the engine with ``CUDA_VISIBLE_DEVICES=`` (no GPU: a real
        engine falls back to the CPU); a repeated index is a typo. Both are config errors."""
        config = tmp_path / "llorch.yaml"
        config.write_text(
            "gpus: {simulated: [{index: 0, name: sim, vram_mb: 1024}]}\n"
            "pools:\n"
            f"  - {{id: p0, engine: mock, model: m0, devices: {devices}}}\n"
        )
        done = subprocess.run(
            [sys.executable, "-m", "llama_orch", "config", "validate", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert 2 == done.returncode, done.stderr
        assert "pools.0.devices" in done.stderr and says in done.stderr
        assert "Traceback" not in done.stderr
