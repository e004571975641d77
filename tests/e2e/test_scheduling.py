"""Scheduling through the HTTP API: budgets, affinity and failover, watchdog, deadlines, rate
limits, placement overrides and priorities, on a real server with the mock engine."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.support.server import RunningServer, config_of, mock_pool, running_server, task_body

HANG = {"hang_after_token": 0}
#: A task that holds its slot until it is canceled (tens of seconds at the mock's pace).
LONG = {"max_tokens": 4000, "ctx": 4096}
#: A pool with two single-slot replicas, steady enough that a long task keeps its slot.
TWO_REPLICAS = {"replicas": 2, "mock": {"ttft_ms": 1, "tokens_per_s": 200.0}}


async def wait_for(srv: RunningServer, task_id: str, states: set[str]) -> Any:
    for _ in range(500):
        task = srv.task(task_id)
        if task is not None and task.state.value in states:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} never reached {states}")


async def running(srv: RunningServer, body: dict[str, Any]) -> Any:
    response = await srv.submit(body)
    assert 202 == response.status_code, response.text
    return await wait_for(srv, body["task_id"], {"running"})


async def leases_drain(srv: RunningServer, pool_id: str = "p0", *, to: int = 0) -> int:
    """Wait (bounded) until the pool holds ``to`` leases; returns what it holds."""
    for _ in range(200):
        if srv.deps.pools.get_active_leases(pool_id) == to:
            return to
        await asyncio.sleep(0.01)
    return srv.deps.pools.get_active_leases(pool_id)


def metrics_of(frames: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return next(data for event, data in frames if event == "metrics")


class TestBudgets:
    async def test_token_budget_headers_frames_session_and_refusal(self) -> None:
        """Remaining tokens show in the 202 and stream headers, metrics frames and the session;
        a task that cannot fit what is left is refused with a non-retriable session-budget 429
        whose Retry-After is the session's remaining TTL."""
        config = config_of(budgets={"tokens": 20})
        async with running_server(config) as srv:
            session = str(uuid.uuid4())
            first = task_body(session_id=session, max_tokens=8)
            admitted = await srv.submit(first)
            async with srv.client.stream("GET", f"/v1/tasks/{first['task_id']}/stream") as r:
                await r.aread()
            frames = await srv.stream(first["task_id"])
            info = (await srv.client.get(f"/v1/sessions/{session}")).json()
            refused = await srv.submit(task_body(session_id=session, max_tokens=13))
        assert "12" == admitted.headers["x-budget-tokens-remaining"]
        assert "x-budget-cost-remaining" not in admitted.headers
        assert "12" == r.headers["x-budget-tokens-remaining"]
        assert 12 == metrics_of(frames)["tokens_budget_remaining"]
        assert 12 == info["tokens_budget_remaining"]
        body = refused.json()
        assert (429, "ADMISSION_REJECT", False, "session-budget") == (
            refused.status_code,
            body["code"],
            body["retriable"],
            body["policy_label"],
        )
        assert "at most 12" in body["message"]
        assert 500 < int(refused.headers["retry-after"]) <= 600

    async def test_pool_cost_budget(self) -> None:
        """A pool's budgets (cost from cost_per_token) override the server's for its tasks."""
        pool = mock_pool(budgets={"cost": 1.0, "cost_per_token": 0.05})
        async with running_server(config_of(pool, budgets={"tokens": 1000})) as srv:
            session = str(uuid.uuid4())
            first = task_body(session_id=session, max_tokens=4)
            admitted = await srv.submit(first)
            await srv.stream(first["task_id"])
            info = (await srv.client.get(f"/v1/sessions/{session}")).json()
            refused = await srv.submit(task_body(session_id=session, max_tokens=17))
        assert ("0.8", "996") == (
            admitted.headers["x-budget-cost-remaining"],
            admitted.headers["x-budget-tokens-remaining"],
        )
        assert 0.8 == info["cost_budget_remaining"]
        assert (429, "session-budget") == (refused.status_code, refused.json()["policy_label"])

    async def test_time_budget(self) -> None:
        """Once a session's decode time is spent, its next task is refused."""
        config = config_of(mock_pool(mock={"tokens_per_s": 100.0}), budgets={"time_ms": 20})
        async with running_server(config) as srv:
            session = str(uuid.uuid4())
            first = task_body(session_id=session, max_tokens=6)
            await srv.submit(first)
            await srv.stream(first["task_id"])
            info = (await srv.client.get(f"/v1/sessions/{session}")).json()
            refused = await srv.submit(task_body(session_id=session, max_tokens=1))
        assert 0 == info["time_budget_remaining_ms"]
        assert "time budget" in refused.json()["message"]

    async def test_delete_evicts_budget_and_turns(self) -> None:
        """DELETE forgets the session: the same id starts over with a fresh budget."""
        async with running_server(config_of(budgets={"tokens": 10})) as srv:
            session = str(uuid.uuid4())
            first = task_body(session_id=session, max_tokens=10)
            await srv.submit(first)
            await srv.stream(first["task_id"])
            assert 429 == (await srv.submit(task_body(session_id=session))).status_code
            assert 204 == (await srv.client.delete(f"/v1/sessions/{session}")).status_code
            again = await srv.submit(task_body(session_id=session, max_tokens=10))
        assert (202, "0") == (again.status_code, again.headers["x-budget-tokens-remaining"])


class TestSessionLimits:
    async def test_turns_then_ttl(self) -> None:
        """Past max_turns a session is refused with Retry-After = its remaining TTL; once the TTL
        has run out the same id starts a fresh session."""
        # The TTL runs from the end of the session's last task: the second turn is asked for
        # while the first still runs, so no slowness of the machine lets the TTL run out first.
        ttl_ms = 1500
        config = config_of(mock_pool(mock=HANG), sessions={"ttl_ms": ttl_ms, "max_turns": 1})
        async with running_server(config) as srv:
            session = str(uuid.uuid4())
            first = task_body(session_id=session, max_tokens=1)
            await running(srv, first)
            refused = await srv.submit(task_body(session_id=session, max_tokens=1))
            canceled = await srv.client.post(f"/v1/tasks/{first['task_id']}/cancel")
            await asyncio.sleep(ttl_ms / 1000 + 0.05)
            expired = await srv.client.get(f"/v1/sessions/{session}")
            fresh = await srv.submit(task_body(session_id=session, max_tokens=1))
        assert (429, "session-budget") == (refused.status_code, refused.json()["policy_label"])
        assert 0 < refused.json()["retry_after_ms"] <= ttl_ms
        assert (204, 404, 202) == (canceled.status_code, expired.status_code, fresh.status_code)


class TestAffinity:
    async def test_session_returns_to_its_replica(self) -> None:
        """A session's next task goes back to the replica that served it, though another
        replica would win the tie-break, and its KV is warm there."""
        async with running_server(config_of(mock_pool(**TWO_REPLICAS))) as srv:
            blocker = await running(srv, task_body(**LONG))
            assert "r0" == blocker.replica_id
            session = str(uuid.uuid4())
            first = task_body(session_id=session, max_tokens=2)
            await srv.submit(first)
            await srv.stream(first["task_id"])
            await srv.client.post(f"/v1/tasks/{blocker.task_id}/cancel")
            assert 0 == await leases_drain(srv)
            second = task_body(session_id=session, max_tokens=2)
            await srv.submit(second)
            frames = await srv.stream(second["task_id"])
            task = srv.task(second["task_id"])
        assert task is not None
        assert "r1" == task.replica_id
        assert "kept" == task.affinity.value
        assert True is metrics_of(frames)["kv_warmth"]

    async def test_failover_reports_cold_kv(self) -> None:
        """When the session's replica is busy, the task fails over: kv_warmth and kv_migrated
        are false in its metrics frames."""
        async with running_server(config_of(mock_pool(**TWO_REPLICAS))) as srv:
            session = str(uuid.uuid4())
            first = task_body(session_id=session, max_tokens=2)
            await srv.submit(first)
            await srv.stream(first["task_id"])
            home = srv.task(first["task_id"]).replica_id  # type: ignore[union-attr]
            # Fill both replicas, then free the one the session did not use.
            blockers = [await running(srv, task_body(**LONG)) for _ in range(2)]
            for blocker in blockers:
                if blocker.replica_id != home:
                    await srv.client.post(f"/v1/tasks/{blocker.task_id}/cancel")
            assert 1 == await leases_drain(srv, to=1)
            second = task_body(session_id=session, max_tokens=2)
            await srv.submit(second)
            frames = await srv.stream(second["task_id"])
            task = srv.task(second["task_id"])
            for blocker in blockers:
                await srv.client.post(f"/v1/tasks/{blocker.task_id}/cancel")
        assert task is not None
        other = "r1" if home == "r0" else "r0"
        assert (other, "failover") == (task.replica_id, task.affinity.value)
        metrics = metrics_of(frames)
        assert (False, False) == (metrics["kv_warmth"], metrics["kv_migrated"])


class TestWatchdog:
    async def test_idle_timeout_frees_the_slot(self) -> None:
        """An engine that hangs after a token is aborted with DECODE_TIMEOUT after idle_ms,
        its slot is released, and the next task runs."""
        pool = mock_pool(mock={"hang_after_token": 1}, timeouts={"idle_ms": 150})
        async with running_server(config_of(pool)) as srv:
            stuck, after = task_body(), task_body(max_tokens=1)
            await srv.submit(stuck)
            await srv.submit(after)
            frames = await srv.stream(stuck["task_id"])
            tail = await srv.stream(after["task_id"])
            leases = await leases_drain(srv)
            canceled = (await srv.client.get("/metrics")).text
        assert ["started", "token", "metrics", "error"] == [e for e, _ in frames]
        assert ("DECODE_TIMEOUT", True) == (frames[-1][1]["code"], frames[-1][1]["retriable"])
        assert "idle timeout of 150 ms" in frames[-1][1]["message"]
        assert "end" == tail[-1][0]
        assert 0 == leases
        assert 'reason="watchdog"' in canceled

    async def test_tokens_refresh_the_replica_heartbeat(self) -> None:
        """The runner reports stream progress (throttled to the metrics interval) to the pool
        manager, which counts it as the replica's heartbeat."""
        pool = mock_pool(mock={"tokens_per_s": 100.0})
        config = config_of(pool, server={"sse": {"metrics_frame_interval_ms": 50}})
        async with running_server(config) as srv:
            manager = srv.deps.pools
            seen: list[tuple[str, float]] = []
            report = manager.stream_progress

            def spy(replica: Any) -> None:
                seen.append((replica.replica_id, replica.last_heartbeat or 0.0))
                report(replica)

            manager.stream_progress = spy  # type: ignore[method-assign]
            # 1 s of tokens: a loaded machine that stalls the loop for a while still sees the
            # stream span several 50 ms intervals.
            body = task_body(max_tokens=100)
            await srv.submit(body)
            frames = await srv.stream(body["task_id"])
            replica = manager.pools["p0"].replicas[0]
        assert "end" == frames[-1][0]
        # 100 tokens at 100/s over 50 ms intervals: about 20 reports, far from one per token
        # (a loaded machine only merges more of them).
        assert 2 <= len(seen) < 50
        assert {"r0"} == {rid for rid, _ in seen}
        assert (replica.last_heartbeat or 0.0) > seen[0][1]


class TestStartPrediction:
    async def test_a_free_slot_predicts_zero_and_busy_slots_do_not(self) -> None:
        """With one of two slots running, the next task is predicted to start at once; with
        both running, the one after it waits for one of them."""
        async with running_server(config_of(mock_pool(slots=2, mock=HANG))) as srv:
            await running(srv, task_body(**LONG))
            second = task_body(**LONG)
            admitted = await srv.submit(second)
            await wait_for(srv, second["task_id"], {"running"})
            third = await srv.submit(task_body(deadline_ms=600_000))
        assert 0 == admitted.json()["predicted_start_ms"]
        assert third.json()["predicted_start_ms"] > 0


class TestDeadlines:
    async def test_unmeetable_deadline_is_refused_up_front(self) -> None:
        """Behind a long task, a deadline shorter than the predicted start is DEADLINE_UNMET."""
        async with running_server(config_of(mock_pool(mock=HANG))) as srv:
            await running(srv, task_body(**LONG))
            response = await srv.submit(task_body(deadline_ms=500))
            roomy = await srv.submit(task_body(deadline_ms=600_000))
        body = response.json()
        assert (400, "DEADLINE_UNMET") == (response.status_code, body["code"])
        assert "predicted start" in body["message"]
        assert 202 == roomy.status_code
        assert roomy.json()["predicted_start_ms"] > 500

    async def test_deadline_passing_in_queue_ends_the_task(self) -> None:
        """A task still queued when its deadline passes ends with an error frame DEADLINE_UNMET."""
        async with running_server(config_of(mock_pool(mock=HANG))) as srv:
            await running(srv, task_body(**LONG, expected_tokens=1))
            late = task_body(deadline_ms=150)
            assert 202 == (await srv.submit(late)).status_code
            frames = await srv.stream(late["task_id"])
            depth = srv.deps.service.pool_status("p0").queue_depth
        assert ["started", "error"] == [e for e, _ in frames]
        assert "DEADLINE_UNMET" == frames[-1][1]["code"]
        assert 0 == depth

    async def test_a_chat_whose_deadline_passes_in_queue_names_the_header(self) -> None:
        """At the OpenAI door the queued deadline's error says deadline_ms is X-Deadline-Ms:
        that caller never set a task field."""
        async with running_server(config_of(mock_pool(mock=HANG))) as srv:
            await running(srv, task_body(**LONG, expected_tokens=1))
            chat = {"model": "m0", "messages": [{"role": "user", "content": "hi"}]}
            answer = await srv.client.post(
                "/v1/chat/completions", json=chat, headers={"X-Deadline-Ms": "150"}
            )
        error = answer.json()["error"]
        assert "deadline_unmet" == error["code"]
        assert "X-Deadline-Ms request header" in error["message"]


class TestRateLimits:
    async def test_per_class_rate_limit(self) -> None:
        """A class over its rate_limit_rps gets 429 ADMISSION_REJECT rate-limit with
        Retry-After; the other class is unaffected."""
        pool = mock_pool(admission={"priorities": [{"name": "batch", "rate_limit_rps": 1}]})
        async with running_server(config_of(pool)) as srv:
            first = await srv.submit(task_body(priority="batch"))
            second = await srv.submit(task_body(priority="batch"))
            interactive = await srv.submit(task_body(priority="interactive"))
        body = second.json()
        assert (202, 429, 202) == (first.status_code, second.status_code, interactive.status_code)
        assert ("ADMISSION_REJECT", "rate-limit", True) == (
            body["code"],
            body["policy_label"],
            body["retriable"],
        )
        assert 0 < body["retry_after_ms"] <= 1000
        assert "1" == second.headers["retry-after"]


class TestPlacementOverrides:
    def two_pools(self, **server: Any) -> Any:
        return config_of(
            mock_pool("p0", devices=[0]),
            mock_pool("p1", devices=[1], mock={"ready": False}),
            mock_pool("p2", devices=[1]),
            server=server,
        )

    async def test_auto_pin_prefer_avoid_and_mask(self) -> None:
        """Without overrides the freest GPU wins; pin, prefer, avoid and an exact device mask
        move the task as asked."""
        async with running_server(self.two_pools()) as srv:

            async def pool_of(placement: dict[str, Any] | None) -> str:
                response = await srv.submit(task_body(placement=placement, max_tokens=1))
                assert 202 == response.status_code, response.text
                return str(response.json()["pool_id"])

            outcomes = [
                await pool_of(None),
                await pool_of({"mode": "pin", "pin_pool_id": "p2"}),
                await pool_of({"mode": "prefer", "prefer_pools": ["p2"]}),
                await pool_of({"mode": "prefer", "prefer_pools": ["p1"]}),
                await pool_of({"mode": "auto", "avoid_pools": ["p0"]}),
                await pool_of({"mode": "auto", "require_device_mask": [1]}),
            ]
        assert ["p0", "p2", "p2", "p0", "p2", "p2"] == outcomes

    async def test_override_refusals(self) -> None:
        """An unready pin is POOL_UNREADY, an unfeasible preference without fallback is
        POOL_UNAVAILABLE no_preferred_feasible, unknown pools and malformed overrides are 400."""
        async with running_server(self.two_pools()) as srv:
            pinned = await srv.submit(task_body(placement={"mode": "pin", "pin_pool_id": "p1"}))
            strict = await srv.submit(
                task_body(
                    placement={"mode": "prefer", "prefer_pools": ["p1"], "allow_fallback": False}
                )
            )
            unknown = await srv.submit(task_body(placement={"mode": "auto", "avoid_pools": ["zz"]}))
            malformed = await srv.submit(task_body(placement={"mode": "pin"}))
        assert (503, "POOL_UNREADY") == (pinned.status_code, pinned.json()["code"])
        assert "pinned_pool_infeasible" in pinned.json()["message"]
        assert (503, "POOL_UNAVAILABLE") == (strict.status_code, strict.json()["code"])
        assert "no_preferred_feasible" in strict.json()["message"]
        assert (400, "INVALID_PARAMS") == (unknown.status_code, unknown.json()["code"])
        assert "['zz']" in unknown.json()["message"]
        assert (400, "INVALID_PARAMS") == (malformed.status_code, malformed.json()["code"])

    async def test_gate(self) -> None:
        """With server.allow_placement_overrides false, overrides are refused; auto passes."""
        async with running_server(self.two_pools(allow_placement_overrides=False)) as srv:
            refused = await srv.submit(task_body(placement={"mode": "pin", "pin_pool_id": "p2"}))
            auto = await srv.submit(task_body(placement={"mode": "auto"}))
        assert (400, 202) == (refused.status_code, auto.status_code)
        assert "allow_placement_overrides" in refused.json()["message"]


class TestPriorities:
    async def test_batch_is_not_starved_under_interactive_load(self) -> None:
        """With weights 2:1, a queued batch task starts after at most two interactive ones."""
        pool = mock_pool(
            mock={"ttft_ms": 20, "tokens_per_s": 1000.0},
            admission={
                "priorities": [
                    {"name": "interactive", "weight": 2},
                    {"name": "batch", "weight": 1},
                ]
            },
        )
        async with running_server(config_of(pool)) as srv:
            blocker = await running(srv, task_body(**LONG))
            batch = task_body(priority="batch", max_tokens=1)
            interactive = [task_body(max_tokens=1) for _ in range(4)]
            positions = [
                (await srv.submit(b)).json()["queue_position"] for b in [batch, *interactive]
            ]
            await srv.client.post(f"/v1/tasks/{blocker.task_id}/cancel")
            for body in [batch, *interactive]:
                await wait_for(srv, body["task_id"], {"done"})
            order = sorted(
                [batch, *interactive],
                key=lambda b: srv.task(b["task_id"]).started_at,  # type: ignore[union-attr]
            )
        names = ["b" if b is batch else f"i{interactive.index(b)}" for b in order]
        assert ["i0", "i1", "b", "i2", "i3"] == names
        assert [0, 0, 1, 3, 4] == positions


class TestGuardrailCounting:
    async def test_refusals_are_counted(self) -> None:
        """Unknown model, ctx over the limit and an unready pool each count in
        tasks_rejected_total under their reason."""
        config = config_of(mock_pool(), mock_pool("p1", model="m1", mock={"ready": False}))
        async with running_server(config) as srv:
            await srv.submit(task_body(model="nope"))
            await srv.submit(task_body(ctx=999_999))
            await srv.submit(task_body(model="m1"))
            text = (await srv.client.get("/metrics")).text
        for reason in ("POOL_UNAVAILABLE", "INVALID_PARAMS", "POOL_UNREADY"):
            assert f'tasks_rejected_total{{engine="mock",reason="{reason}"}} 1.0' in text


class TestPredictions:
    async def test_predictions_grow_with_queue_position(self) -> None:
        """Behind two busy slots, each queued task is predicted to start later than the one
        ahead of it, by about its predecessors' expected work over the slots."""
        pool = mock_pool(slots=2, mock={"ttft_ms": 10, "tokens_per_s": 100.0})
        async with running_server(config_of(pool)) as srv:
            blockers = [await running(srv, task_body(**LONG, expected_tokens=50)) for _ in "ab"]
            admitted = [(await srv.submit(task_body(expected_tokens=100))).json() for _ in range(6)]
            # Read at one instant: predictions made at admission also differ by the time
            # between the admissions, which a loaded machine stretches.
            board = srv.deps.service.board(queued_limit=10, finished_limit=0)
            for blocker in blockers:
                await srv.client.post(f"/v1/tasks/{blocker.task_id}/cancel")
        positions = [a["queue_position"] for a in admitted]
        at_admission = [a["predicted_start_ms"] for a in admitted]
        assert list(range(6)) == positions
        # Two slots: tasks k and k+1 start together, so at admission the later one may read a
        # few ms less (time passed between them); each pair starts after the pair ahead.
        assert at_admission[0] > 0
        assert all(at_admission[k + 2] > at_admission[k] for k in range(4)), at_admission
        (queue,) = board.queues
        assert list(range(6)) == [t.position for t in queue.tasks]
        predicted = [t.predicted_start_ms for t in queue.tasks]
        assert predicted == sorted(predicted)
        # Four tasks over two slots: two service times of 10 ms + 100 tokens / 100 tok/s.
        assert 1900 <= predicted[5] - predicted[1] <= 2150
