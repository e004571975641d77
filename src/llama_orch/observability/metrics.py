"""Metrics: one application-owned registry; every metric name of the contract is defined here.

Names, types and label sets follow SPEC §16 and ``ci/metrics.lint.json`` exactly. Hot paths use
label children bound once per (pool, replica) through ``ReplicaMetrics``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest

from llama_orch.core.model import Assigned, PlacementDecision
from llama_orch.vocab import Priority

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

FIRST_TOKEN_BUCKETS = (50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000)
DECODE_BUCKETS = (250, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000)
#: Pools (admission) or replicas (dispatch) a placement decision looked at.
CANDIDATE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

_POOL = ("engine", "engine_version", "pool_id")
_REPLICA = (*_POOL, "replica_id")


#: Why the supervisor restarted an engine (``pool_restarts_total{reason}``).
RESTART_REASONS = (
    "exited",
    "hung",
    "never_ready",
    "launch_failed",
    "actor_died",
    "node_lost",
    "head_lost",
)


class Metrics:
    """The metric families of the contract, registered on a private registry."""

    def __init__(self) -> None:
        # ``*_created`` samples would double every counter's series for a value nobody graphs.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._rejected: dict[tuple[str, str], Counter] = {}
        self._enqueued: dict[tuple[str, str, str, str], Counter] = {}
        self.tasks_enqueued_total = Counter(
            "tasks_enqueued_total",
            "Tasks admitted to a pool queue",
            [*_REPLICA, "priority"],
            registry=r,
        )
        self.tasks_started_total = Counter(
            "tasks_started_total",
            "Tasks dispatched to a replica",
            [*_REPLICA, "priority"],
            registry=r,
        )
        self.tasks_canceled_total = Counter(
            "tasks_canceled_total", "Tasks canceled", [*_REPLICA, "reason"], registry=r
        )
        self.tasks_rejected_total = Counter(
            "tasks_rejected_total", "Tasks refused or evicted", ["engine", "reason"], registry=r
        )
        self.queue_depth = Gauge(
            "queue_depth", "Tasks waiting in a pool queue", [*_POOL, "priority"], registry=r
        )
        self.kv_cache_usage_ratio = Gauge(
            "kv_cache_usage_ratio", "KV cache use of a replica (0..1)", list(_REPLICA), registry=r
        )
        self.gpu_utilization = Gauge(
            "gpu_utilization", "GPU utilization in percent", [*_REPLICA, "device"], registry=r
        )
        self.vram_used_bytes = Gauge(
            "vram_used_bytes", "VRAM in use in bytes", [*_REPLICA, "device"], registry=r
        )
        self.latency_first_token_ms = Histogram(
            "latency_first_token_ms",
            "Milliseconds from admission to the first token",
            [*_POOL, "priority"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.latency_decode_ms = Histogram(
            "latency_decode_ms",
            "Milliseconds of decode for a whole stream",
            [*_POOL, "priority"],
            buckets=DECODE_BUCKETS,
            registry=r,
        )
        self.tokens_in_total = Counter(
            "tokens_in_total", "Prompt tokens sent to engines", list(_REPLICA), registry=r
        )
        self.tokens_out_total = Counter(
            "tokens_out_total", "Tokens streamed to clients", list(_REPLICA), registry=r
        )
        self.admission_backpressure_events_total = Counter(
            "admission_backpressure_events_total",
            "Full-queue policy applications",
            ["engine", "policy"],
            registry=r,
        )
        self.catalog_verifications_total = Counter(
            "catalog_verifications_total",
            "Model digest verifications",
            ["result", "reason", "engine"],
            registry=r,
        )
        self.model_state = Gauge(
            "model_state",
            "1 for the lifecycle state a catalog model is in",
            ["model_id", "state"],
            registry=r,
        )
        self.active_leases = Gauge(
            "active_leases", "Tasks holding a slot on a pool", ["pool_id"], registry=r
        )
        self.pool_ready = Gauge("pool_ready", "1 when the pool is Ready", ["pool_id"], registry=r)
        self.sse_backpressure_drops_total = Counter(
            "sse_backpressure_drops_total",
            "metrics frames dropped for slow clients",
            ["pool_id"],
            registry=r,
        )
        self.placement_decisions_total = Counter(
            "placement_decisions_total",
            "Placement decisions by outcome, pin and fallback (ORCH-3962)",
            ["outcome", "pinned", "fallback"],
            registry=r,
        )
        self.placement_candidates_considered = Histogram(
            "placement_candidates_considered",
            "Candidates a placement decision considered",
            buckets=CANDIDATE_BUCKETS,
            registry=r,
        )
        self.adapter_retries_total = Counter(
            "adapter_retries_total",
            "Retries of idempotent engine calls by the adapter host (D-HOST-01)",
            ["engine", "pool_id"],
            registry=r,
        )
        self.adapter_breaker_trips_total = Counter(
            "adapter_breaker_trips_total",
            "Circuit breaker openings by the adapter host (D-HOST-01)",
            ["engine", "pool_id"],
            registry=r,
        )
        self.background_restarts_total = Counter(
            "background_restarts_total",
            "Background loops restarted by the supervisor after a crash",
            ["loop"],
            registry=r,
        )
        self.tasks_retained_bytes = Gauge(
            "tasks_retained_bytes",
            "Bytes held by finished tasks kept for replay (transcripts and records)",
            registry=r,
        )
        self.drain_events_total = Counter(
            "drain_events_total",
            "Pool drains started, by reason",
            ["pool_id", "reason"],
            registry=r,
        )
        self.pool_preload_total = Counter(
            "pool_preload_total",
            "Replica preloads (engine launch to Ready) by outcome",
            ["pool_id", "outcome"],
            registry=r,
        )
        self.pool_restarts_total = Counter(
            "pool_restarts_total",
            "Engine process restarts by the supervisor, by reason",
            ["pool_id", "reason"],
            registry=r,
        )
        self.pool_restart_backoff_seconds = Gauge(
            "pool_restart_backoff_seconds",
            "Seconds of backoff before a replica's next engine restart (0 while running)",
            ["pool_id", "replica_id"],
            registry=r,
        )
        self.pool_restart_storm = Gauge(
            "pool_restart_storm",
            "1 while a replica's restart-storm breaker holds it stopped",
            ["pool_id", "replica_id"],
            registry=r,
        )
        self.gpu_inventory_simulated = Gauge(
            "gpu_inventory_simulated",
            "1 when gpu_utilization and vram_used_bytes come from a simulated GPU inventory",
            registry=r,
        )
        self.cluster_host_stale = Gauge(
            "cluster_host_stale",
            "1 while a cluster host's agent missed its last inventory deadline (its replicas "
            "take no new work)",
            ["host"],
            registry=r,
        )
        self.server_connections_open = Gauge(
            "server_connections_open",
            "Client connections the HTTP server holds, as last counted",
            registry=r,
        )
        self.server_connections_max = Gauge(
            "server_connections_max",
            "Client connections served at once; beyond it they wait in the listen backlog",
            registry=r,
        )
        self.server_connection_cap_reached_total = Counter(
            "server_connection_cap_reached_total",
            "Times the open client connections reached server_connections_max",
            registry=r,
        )
        self.server_connections_closed_silent_total = Counter(
            "server_connections_closed_silent_total",
            "Client connections closed for sending no byte within the first-byte timeout",
            registry=r,
        )

    def init_pool_lifecycle(self, pool_id: str, replica_ids: list[str]) -> None:
        """Zero series for a pool's drains, preloads, restarts and backoff, so dashboards and
        rate() see the pool before its first event (restart reasons: RESTART_REASONS)."""
        for reason in ("drain", "reload"):
            self.drain_events_total.labels(pool_id, reason)
        for outcome in ("success", "failure"):
            self.pool_preload_total.labels(pool_id, outcome)
        for reason in RESTART_REASONS:
            self.pool_restarts_total.labels(pool_id, reason)
        for replica_id in replica_ids:
            self.pool_restart_backoff_seconds.labels(pool_id, replica_id).set(0)
            self.pool_restart_storm.labels(pool_id, replica_id).set(0)

    def forget_replica_lifecycle(self, pool_id: str, replica_id: str) -> None:
        """Drop the restart gauges of a replica a reload stopped for good (replaced, or rolled
        back), so a storm it tripped is not reported for as long as the server runs."""
        for gauge in (self.pool_restart_backoff_seconds, self.pool_restart_storm):
            with contextlib.suppress(KeyError):
                gauge.remove(pool_id, replica_id)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def rejected(self, engine: str, reason: str) -> Counter:
        """The ``tasks_rejected_total`` child of (engine, reason), bound on first use."""
        child = self._rejected.get((engine, reason))
        if child is None:
            child = self._rejected[(engine, reason)] = self.tasks_rejected_total.labels(
                engine, reason
            )
        return child

    def enqueued(self, engine: str, engine_version: str, pool_id: str, priority: str) -> Counter:
        """The ``tasks_enqueued_total`` child of one pool and class (replica "none")."""
        key = (engine, engine_version, pool_id, priority)
        child = self._enqueued.get(key)
        if child is None:
            child = self._enqueued[key] = self.tasks_enqueued_total.labels(
                engine, engine_version, pool_id, "none", priority
            )
        return child

    def bind_replica(
        self, engine: str, engine_version: str, pool_id: str, replica_id: str
    ) -> ReplicaMetrics:
        labels = (engine, engine_version, pool_id, replica_id)
        pool_labels = labels[:3]
        return ReplicaMetrics(
            started_interactive=self.tasks_started_total.labels(*labels, "interactive"),
            started_batch=self.tasks_started_total.labels(*labels, "batch"),
            tokens_in=self.tokens_in_total.labels(*labels),
            tokens_out=self.tokens_out_total.labels(*labels),
            first_token_interactive=self.latency_first_token_ms.labels(*pool_labels, "interactive"),
            first_token_batch=self.latency_first_token_ms.labels(*pool_labels, "batch"),
            decode_interactive=self.latency_decode_ms.labels(*pool_labels, "interactive"),
            decode_batch=self.latency_decode_ms.labels(*pool_labels, "batch"),
            labels=labels,
        )

    def bind_placement(self) -> PlacementMetrics:
        """The placement series, bound once: every (outcome, pinned, fallback) child."""
        children = {
            (outcome, pinned, fallback): self.placement_decisions_total.labels(
                outcome, str(pinned).lower(), str(fallback).lower()
            )
            for outcome in ("assigned", "no_capacity")
            for pinned in (False, True)
            for fallback in (False, True)
        }
        return PlacementMetrics(children, self.placement_candidates_considered)

    def bind_queue_depth(self, engine: str, engine_version: str, pool_id: str) -> dict[str, Gauge]:
        """``queue_depth`` children of one pool, keyed by priority value."""
        return {
            priority: self.queue_depth.labels(engine, engine_version, pool_id, priority)
            for priority in PRIORITIES
        }

    def bind_adapter(self, engine: str, pool_id: str) -> AdapterMetrics:
        """Retry and breaker-trip counters of one pool's adapters, bound once."""
        return AdapterMetrics(
            retries=self.adapter_retries_total.labels(engine, pool_id),
            breaker_trips=self.adapter_breaker_trips_total.labels(engine, pool_id),
        )


#: Priority label values, in the order ``queue_depth`` children are bound.
PRIORITIES = tuple(p.value for p in Priority)


@dataclass(frozen=True, slots=True)
class PlacementMetrics:
    """Children of ``placement_decisions_total`` and the candidates histogram (ORCH-3962)."""

    decisions: dict[tuple[str, bool, bool], Counter]
    candidates: Histogram

    def record(self, decision: PlacementDecision) -> None:
        log = decision.log
        outcome = "assigned" if isinstance(decision, Assigned) else "no_capacity"
        self.decisions[(outcome, log.pinned, log.fallback_used)].inc()
        self.candidates.observe(log.candidates_considered)


@dataclass(frozen=True, slots=True)
class AdapterMetrics:
    """The adapter host's counters for one (engine, pool) (D-HOST-01)."""

    retries: Counter
    breaker_trips: Counter


@dataclass(frozen=True, slots=True)
class ReplicaMetrics:
    """Label children of one replica, bound once (ORCH-3460)."""

    started_interactive: Counter
    started_batch: Counter
    tokens_in: Counter
    tokens_out: Counter
    first_token_interactive: Histogram
    first_token_batch: Histogram
    decode_interactive: Histogram
    decode_batch: Histogram
    labels: tuple[str, str, str, str]
