"""Properties of the AdmissionQueue against a plain list model (ORCH-3250, OC-CORE-1001..1005)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llama_orch.core.queue import AdmissionQueue, Enqueued, Rejected
from llama_orch.vocab import FullPolicy, Priority
from tests.strategies import queue_ops

INT, BAT = Priority.INTERACTIVE, Priority.BATCH


class ModelQueue:
    """The rules written as lists: FIFO per class, interactive first but at most ``burst`` in a
    row while batch waits, reject or drop-lru when full (D-CORE-02)."""

    def __init__(self, capacity: int, policy: FullPolicy, caps: dict[Priority, int], burst: int):
        self.capacity, self.policy, self.caps, self.burst = capacity, policy, caps, burst
        self.classes: dict[Priority, list[str]] = {INT: [], BAT: []}
        self.streak = 0

    def __len__(self) -> int:
        return len(self.classes[INT]) + len(self.classes[BAT])

    def enqueue(self, task_id: str, priority: Priority) -> str | bool | None:
        """False when refused; otherwise the evicted id or None."""
        cap = self.caps.get(priority)
        class_full = cap is not None and len(self.classes[priority]) >= cap
        total_full = len(self) >= self.capacity
        victim = None
        if class_full or total_full:
            if self.policy is FullPolicy.REJECT:
                return False
            if class_full:
                victim = self.classes[priority][0] if self.classes[priority] else None
            elif self.classes[BAT]:
                victim = self.classes[BAT][0]
            elif priority is INT and self.classes[INT]:
                victim = self.classes[INT][0]
            if victim is None:
                return False
            self.cancel(victim)
        self.classes[priority].append(task_id)
        return victim

    def dequeue(self) -> str | None:
        inter, batch = self.classes[INT], self.classes[BAT]
        if batch and (not inter or self.streak >= self.burst):
            self.streak = 0
            return batch.pop(0)
        if inter:
            task = inter.pop(0)
            self.streak = self.streak + 1 if batch else 0
            return task
        return None

    def cancel(self, task_id: str) -> bool:
        for klass in self.classes.values():
            if task_id in klass:
                klass.remove(task_id)
                return True
        return False


queue_shapes = st.tuples(
    st.integers(1, 8),
    st.sampled_from(list(FullPolicy)),
    st.fixed_dictionaries({}, optional={INT: st.integers(1, 6), BAT: st.integers(1, 6)}),
    st.integers(1, 4),
)


class TestAgainstModel:
    @settings(max_examples=300, deadline=None)
    @given(queue_shapes, queue_ops)
    def test_same_outcomes_as_model(self, shape, ops) -> None:  # type: ignore[no-untyped-def]
        """Every enqueue, dequeue and cancel gives what the list model gives: bounded, FIFO
        within a class, priority order with the burst rule, the drop-lru victim, cancel
        removal; and positions always predict the dequeue order."""
        capacity, policy, caps, burst = shape
        queue = AdmissionQueue(capacity, policy, caps, interactive_burst=burst)
        model = ModelQueue(capacity, policy, caps, burst)
        ids: list[str] = []
        for op, arg in ops:
            if op == "enqueue":
                task_id = f"t{len(ids)}"
                ids.append(task_id)
                predicted = queue.position_if_enqueued(arg)
                outcome = queue.enqueue(task_id, arg)
                expected = model.enqueue(task_id, arg)
                if expected is False:
                    assert isinstance(outcome, Rejected)
                else:
                    assert isinstance(outcome, Enqueued)
                    assert expected == outcome.evicted
                    if outcome.evicted is None:
                        assert predicted == outcome.position
                    assert queue.position(task_id) == outcome.position
            elif op == "dequeue":
                assert model.dequeue() == queue.dequeue()
            elif ids:
                task_id = ids[arg % len(ids)]
                assert model.cancel(task_id) == queue.cancel(task_id)
                assert task_id not in queue
            assert len(model) == len(queue) <= capacity
            for priority, cap in caps.items():
                assert queue.depth(priority) <= cap
            order = list(queue)
            assert [queue.position(t) for t in order] == list(range(len(order)))
            assert model.classes[INT] == list(queue.view(INT))
            assert model.classes[BAT] == list(queue.view(BAT))

    @settings(max_examples=100, deadline=None)
    @given(st.integers(1, 5), st.lists(st.sampled_from([INT, BAT]), max_size=40))
    def test_iteration_order_is_dequeue_order(self, burst: int, priorities: list[Priority]) -> None:
        """Iterating a queue lists exactly the order in which it would be drained."""
        queue = AdmissionQueue(100, interactive_burst=burst)
        for n, priority in enumerate(priorities):
            queue.enqueue(f"t{n}", priority)
        listed = list(queue)
        drained = [queue.dequeue() for _ in range(len(listed))]
        assert listed == drained
        assert None is queue.dequeue()

    @settings(max_examples=100, deadline=None)
    @given(st.integers(1, 5), st.integers(0, 30), st.integers(0, 5))
    def test_batch_is_never_starved(self, burst: int, interactive: int, streak: int) -> None:
        """However many interactive tasks keep arriving, a waiting batch task is dispatched
        within burst + 1 dispatches."""
        queue = AdmissionQueue(1000, interactive_burst=burst)
        for n in range(streak):
            queue.enqueue(f"warm{n}", INT)
        queue.enqueue("batch", BAT)
        for n in range(interactive):
            queue.enqueue(f"i{n}", INT)
        served = []
        for n in range(burst + 1):
            served.append(queue.dequeue())
            queue.enqueue(f"late{n}", INT)
        assert "batch" in served
