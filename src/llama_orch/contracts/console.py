"""The console's picture of the server: ``GET /v1/status`` and the events of ``GET /v1/events``.

One snapshot type (``Status``) is cut into five sections, each its own SSE event (``meta``,
``gpu``, ``pool``, ``queue``, ``task``); a client that applies every section it receives holds
the same ``Status`` the JSON endpoint returns.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llama_orch.vocab import Engine, Priority

PoolState = Literal["Ready", "Unready", "Draining", "Starting"]
Outcome = Literal["end", "canceled", "error"]

#: SSE event names of ``GET /v1/events``, in the order a fresh subscriber receives them.
EVENT_NAMES = ("meta", "gpu", "pool", "queue", "task")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsoleFeatures(_Wire):
    """Which optional control endpoints this server serves; the console shows their buttons
    and views only when they are true."""

    drain: bool = Field(description="POST /v1/pools/{id}/drain exists")
    reload: bool = Field(description="POST /v1/pools/{id}/reload exists")
    catalog: bool = Field(description="GET /v1/catalog/models exists")


class GpuStatus(_Wire):
    index: int
    name: str
    vram_total_bytes: int
    vram_used_bytes: int
    utilization_pct: float | None = None
    temperature_c: float | None = Field(None, description="Where NVML reports it")
    simulated: bool
    #: ``pool_id/replica_id`` of every replica placed on this GPU.
    replicas: list[str] = []
    #: The cluster host the GPU is on (None: the server's machine).
    host: str | None = None
    #: True while that host's agent missed its last inventory deadline.
    stale: bool = False


class ReplicaStatus(_Wire):
    replica_id: str
    state: str
    slots_busy: int
    slots_total: int
    engine_version: str
    last_error: str | None = None
    #: The cluster host running the replica (None: the server's machine).
    host: str | None = None


class PoolOperation(_Wire):
    """The latest drain or reload of a pool (as ``last_operation`` of pool health)."""

    #: drain or reload.
    kind: str
    #: running, done, rolled_back (a reload whose new replicas never became Ready), or failed
    #: (a reload whose external engine did not pass its gates in time).
    state: str
    error: str | None = None


class PoolStatus(_Wire):
    pool_id: str
    state: PoolState
    last_error: str | None = None
    engine: Engine
    engine_version: str | None = None
    model: str
    model_ref: str = Field(
        description="A name a task may give as model_ref for this pool's model that holds no "
        "secret (the model, less a URL's credentials, which model shows redacted)."
    )
    ctx_max: int
    devices: list[int]
    simulated: bool
    replicas: list[ReplicaStatus]
    slots_busy: int
    slots_total: int
    queue_capacity: int
    queue_depth: dict[Priority, int]
    #: Tokens per second over the pool's running tasks, as they stream now.
    tokens_per_s: float
    #: Engine restarts, where the pool's engine processes are supervised (else null).
    restart_count: int | None = None
    #: How a launched engine process last ended (reason, exit status, its last log line).
    last_exit: str | None = None
    last_operation: PoolOperation | None = None


class QueuedTask(_Wire):
    task_id: str
    pool_id: str
    priority: Priority
    position: int
    predicted_start_ms: int
    on_time_probability: float
    waited_ms: int


class QueueStatus(_Wire):
    pool_id: str
    depth: int
    #: The first tasks in dispatch order; ``depth`` counts them all.
    tasks: list[QueuedTask]


class RunningTask(_Wire):
    task_id: str
    pool_id: str
    replica_id: str | None
    priority: Priority
    model: str
    tokens_out: int
    tokens_per_s: float
    running_ms: int


class FinishedTask(_Wire):
    task_id: str
    pool_id: str
    priority: Priority
    model: str
    outcome: Outcome
    #: The error code of an ``error`` ending (e.g. ``DEADLINE_UNMET``).
    error_code: str | None = None
    tokens_out: int
    duration_ms: int
    #: How long ago it ended.
    ago_ms: int


class MetaEvent(_Wire):
    api_version: str
    simulated: bool
    features: ConsoleFeatures
    #: How often the server refreshes the snapshot for ``/v1/events``.
    interval_ms: int
    snapshot_version: int


class GpuEvent(_Wire):
    gpus: list[GpuStatus]


class PoolEvent(_Wire):
    pools: list[PoolStatus]


class QueueEvent(_Wire):
    queues: list[QueueStatus]


class TaskEvent(_Wire):
    running: list[RunningTask]
    #: Most recent first.
    finished: list[FinishedTask]


class Status(_Wire):
    """Everything the console's front view shows, read at one instant."""

    meta: MetaEvent
    gpu: GpuEvent
    pool: PoolEvent
    queue: QueueEvent
    task: TaskEvent

    def sections(self) -> dict[str, BaseModel]:
        """Event name -> payload, in ``EVENT_NAMES`` order."""
        return {name: getattr(self, name) for name in EVENT_NAMES}


EVENT_MODELS: tuple[type[BaseModel], ...] = (MetaEvent, GpuEvent, PoolEvent, QueueEvent, TaskEvent)


#: One event of ``GET /v1/events`` as a client's parser reads it (OpenAPI 3.1: the schema of an
#: event stream describes each event); ``data`` is one line of JSON whose schema the event names
#: (``x-events``).
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": list(EVENT_NAMES)},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


def openapi_paths() -> dict[str, Any]:
    """``/v1/status`` and ``/v1/events`` for the control plane's OpenAPI document."""
    events = {
        name: {"$ref": f"#/components/schemas/{model.__name__}"}
        for name, model in zip(EVENT_NAMES, EVENT_MODELS, strict=True)
    }
    return {
        "/v1/status": {
            "get": {
                "operationId": "getStatus",
                "summary": "GPUs, pools, queues and tasks at one instant (the console's data)",
                "responses": {
                    "200": {
                        "description": "The snapshot",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Status"}}
                        },
                    },
                    "401": {"description": "MISSING_TOKEN or BAD_TOKEN"},
                },
            }
        },
        "/v1/events": {
            "get": {
                "operationId": "getEvents",
                "summary": "The status as a live feed of typed SSE events",
                "responses": {
                    "200": {
                        "description": (
                            "Server-Sent Events. A fresh subscriber first receives every section "
                            "(meta, gpu, pool, queue, task: together a Status); afterwards a "
                            "section is sent again only when it changed, at most once per "
                            "meta.interval_ms. Comment lines are heartbeats."
                        ),
                        "content": {
                            "text/event-stream": {"schema": _SSE_EVENT, "x-events": events}
                        },
                    },
                    "401": {"description": "MISSING_TOKEN or BAD_TOKEN"},
                },
            }
        },
    }
