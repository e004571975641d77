"""What a BDD scenario knows: one ``llorch serve`` subprocess and what its HTTP answers said.

Everything here goes over HTTP to the real server (or runs the real CLI); nothing reads the
server's internals.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from httpx_sse import connect_sse

from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import SIMULATED_GPUS, mock_pool

T = TypeVar("T")
Frames = list[tuple[str, dict[str, Any]]]
#: A task that holds its slot until it is canceled (tens of seconds at the scenario pace).
LONG_TOKENS = 4000


def pool(pool_id: str = "p0", model: str = "m0", **overrides: Any) -> dict[str, Any]:
    """A mock pool steady enough that a long task keeps its slot for the whole scenario."""
    mock = {"ttft_ms": 1, "tokens_per_s": 200.0, **overrides.pop("mock", {})}
    return mock_pool(pool_id, model, mock=mock, **overrides)


@dataclass
class World:
    workdir: Path
    stack: contextlib.ExitStack
    environ: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    server: ServeProcess | None = None
    http: httpx.Client | None = None
    response: httpx.Response | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    admissions: dict[str, httpx.Response] = field(default_factory=dict)
    frames: dict[str, Frames] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def serve(self, *pools: dict[str, Any], **top: Any) -> None:
        server = {"artifacts_dir": str(self.workdir / "artifacts"), **top.pop("server", {})}
        config = {"gpus": SIMULATED_GPUS, "pools": list(pools), "server": server, **top}
        self.server = self.stack.enter_context(
            serve_process(config, self.workdir, environ=self.environ)
        )
        self.http = self.stack.enter_context(
            httpx.Client(base_url=self.server.url, headers=self.headers, timeout=10.0)
        )

    @property
    def client(self) -> httpx.Client:
        assert self.http is not None, "no server was started in this scenario"
        return self.http

    def session(self, name: str) -> str:
        return self.sessions.setdefault(name, str(uuid.uuid4()))

    def body(self, name: str, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "task_id": str(uuid.uuid4()),
            "session_id": str(uuid.uuid4()),
            "workload": "completion",
            "model_ref": "m0",
            "engine": "mock",
            "ctx": 4096,
            "priority": "interactive",
            "max_tokens": 4,
            "deadline_ms": 60_000,
            "prompt": f"scenario task {name}",
            "seed": 7,
        }
        body.update(overrides)
        self.tasks[name] = body
        return body

    def submit(self, name: str, **overrides: Any) -> httpx.Response:
        body = self.body(name, **overrides)
        response = self.client.post("/v1/tasks", json=body)
        self.admissions[name] = self.response = response
        return response

    def task_id(self, name: str) -> str:
        return str(self.tasks[name]["task_id"])

    def read_stream(self, name: str, **params: Any) -> Frames:
        frames: Frames = []
        url = f"/v1/tasks/{self.task_id(name)}/stream"
        with connect_sse(self.client, "GET", url, params=params, timeout=30.0) as source:
            source.response.raise_for_status()
            for sse in source.iter_sse():
                frames.append((sse.event, orjson.loads(sse.data)))
        self.frames[name] = frames
        return frames

    def health(self, pool_id: str = "p0") -> dict[str, Any]:
        data: dict[str, Any] = self.client.get(f"/v1/pools/{pool_id}/health").json()
        return data

    def until(self, probe: Callable[[], T | None], what: str, timeout_s: float = 15.0) -> T:
        """Poll ``probe`` over HTTP until it returns something truthy (bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = probe()
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def world(workdir: Path) -> Iterator[World]:
    with contextlib.ExitStack() as stack:
        yield World(workdir, stack)
