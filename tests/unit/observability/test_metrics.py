"""Metrics: label children bound once and the placement series (ORCH-3962)."""

from __future__ import annotations

from llama_orch.core.model import Assigned, DecisionLog, NoCapacity, NoCapacityReason
from llama_orch.observability.metrics import Metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


class TestBoundChildren:
    def test_rejected_children_are_bound_once(self) -> None:
        """The same (engine, reason) returns the same child, which counts into the family."""
        metrics = Metrics()
        first = metrics.rejected("mock", "POOL_UNREADY")
        first.inc()
        metrics.rejected("mock", "POOL_UNREADY").inc()
        value = sample(metrics, "tasks_rejected_total", engine="mock", reason="POOL_UNREADY")
        assert (True, 2.0) == (first is metrics.rejected("mock", "POOL_UNREADY"), value)

    def test_enqueued_children_use_replica_none(self) -> None:
        """Enqueued children are per pool and class, with replica_id "none"."""
        metrics = Metrics()
        child = metrics.enqueued("mock", "v1", "p0", "batch")
        child.inc()
        labels = {"engine": "mock", "engine_version": "v1", "pool_id": "p0", "priority": "batch"}
        value = sample(metrics, "tasks_enqueued_total", **labels, replica_id="none")
        assert (True, 1.0) == (child is metrics.enqueued("mock", "v1", "p0", "batch"), value)

    def test_queue_depth_binds_every_priority(self) -> None:
        """One pool's queue_depth children cover every priority class."""
        gauges = Metrics().bind_queue_depth("mock", "v1", "p0")
        assert ["interactive", "batch"] == list(gauges)

    def test_replica_binding_leaves_kv_usage_unset(self) -> None:
        """Binding a replica creates no kv_cache_usage_ratio series; only a reported value does."""
        metrics = Metrics()
        metrics.bind_replica("mock", "v1", "p0", "r0")
        families = {f.name: f.samples for f in metrics.registry.collect()}
        assert [] == families["kv_cache_usage_ratio"]


class TestPlacementMetrics:
    def test_every_label_combination_is_bound_up_front(self) -> None:
        """All eight (outcome, pinned, fallback) series exist before any decision."""
        metrics = Metrics()
        metrics.bind_placement()
        families = {f.name: f.samples for f in metrics.registry.collect()}
        series = {
            (s.labels["outcome"], s.labels["pinned"], s.labels["fallback"])
            for s in families["placement_decisions"]
        }
        assert 8 == len(series)

    def test_record_counts_outcome_and_candidates(self) -> None:
        """A decision counts under its outcome, pin and fallback, and observes its candidates."""
        metrics = Metrics()
        placement = metrics.bind_placement()
        placement.record(Assigned("p0", "r0", DecisionLog(3, (), (), fallback_used=True)))
        log = DecisionLog(2, (), (), pinned=True)
        placement.record(NoCapacity(NoCapacityReason.PINNED_POOL_INFEASIBLE, 2, log))
        assigned = sample(
            metrics,
            "placement_decisions_total",
            outcome="assigned",
            pinned="false",
            fallback="true",
        )
        refused = sample(
            metrics,
            "placement_decisions_total",
            outcome="no_capacity",
            pinned="true",
            fallback="false",
        )
        count = sample(metrics, "placement_candidates_considered_count")
        total = sample(metrics, "placement_candidates_considered_sum")
        assert (1.0, 1.0, 2.0, 5.0) == (assigned, refused, count, total)
