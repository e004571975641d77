"""Steps about servers, tasks, streams, cancel, sessions, placement and health."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
from httpx_sse import connect_sse
from pytest_bdd import given, parsers, then, when

from tests.bdd.world import LONG_TOKENS, Frames, World, pool

TWO_GPUS_THREE_POOLS = (
    'a server with pools "p0" on GPU 0, "p1" on GPU 1 that never gets ready, and "p2" on GPU 1'
)


def _names(text: str) -> list[str]:
    return re.findall(r'"([^"]+)"', text)


def _tokens(frames: Frames) -> list[dict[str, Any]]:
    return [data for event, data in frames if event == "token"]


def _text(frames: Frames) -> str:
    return "".join(str(t["t"]) for t in _tokens(frames))


def _answer(scene: World) -> httpx.Response:
    assert scene.response is not None, "no request was sent yet"
    return scene.response


# --- servers ------------------------------------------------------------------------------


@given("a server with one mock pool")
def one_pool(scene: World) -> None:
    scene.serve(pool())


@given(parsers.parse("a server whose single-slot pool queues {n:d} task and rejects when full"))
def rejecting_pool(scene: World, n: int) -> None:
    scene.serve(pool(queue={"capacity": n, "full_policy": "reject"}))


@given(
    parsers.parse(
        "a server whose single-slot pool queues {n:d} task and drops the oldest when full"
    )
)
def dropping_pool(scene: World, n: int) -> None:
    scene.serve(pool(queue={"capacity": n, "full_policy": "drop-lru"}))


@given(parsers.parse("a server whose sessions have a budget of {n:d} tokens"))
def budgeted(scene: World, n: int) -> None:
    scene.serve(pool(mock={"tokens_per_s": 2000.0}), budgets={"tokens": n})


@given(TWO_GPUS_THREE_POOLS)
def three_pools(scene: World) -> None:
    scene.serve(
        pool("p0", devices=[0]),
        pool("p1", devices=[1], mock={"ready": False}),
        pool("p2", devices=[1]),
    )


@given(parsers.parse("a server whose pool weighs interactive {i:d} to batch {b:d}"))
def weighted(scene: World, i: int, b: int) -> None:
    weights = [{"name": "interactive", "weight": i}, {"name": "batch", "weight": b}]
    scene.serve(pool(admission={"priorities": weights}))


# --- tasks --------------------------------------------------------------------------------


@given(parsers.parse('task "{name}" holds the slot'))
def holds_slot(scene: World, name: str) -> None:
    assert 202 == scene.submit(name, max_tokens=LONG_TOKENS).status_code
    scene.until(lambda: scene.health()["active_leases"] >= 1, f"{name} to hold the slot")


@given(parsers.parse('task "{name}" waits in the queue'))
def waits(scene: World, name: str) -> None:
    assert 202 == scene.submit(name).status_code


@given(parsers.parse('batch task "{name}" waits in the queue'))
def batch_waits(scene: World, name: str) -> None:
    assert 202 == scene.submit(name, priority="batch").status_code


@when(parsers.re(r'I submit task "(?P<name>[^"]+)" for (?P<n>\d+) tokens?'), converters={"n": int})
def submit(scene: World, name: str, n: int) -> None:
    scene.submit(name, max_tokens=n)


@when(parsers.parse('I submit task "{name}" for {n:d} tokens with seed {seed:d}'))
def submit_seeded(scene: World, name: str, n: int, seed: int) -> None:
    scene.submit(name, max_tokens=n, seed=seed, prompt="the same prompt")


@when(parsers.parse('I submit task "{name}" for {n:d} tokens in session "{session}"'))
def submit_in_session(scene: World, name: str, n: int, session: str) -> None:
    scene.submit(name, max_tokens=n, session_id=scene.session(session))


@when(
    parsers.re(r'I submit batch task "(?P<name>[^"]+)" for (?P<n>\d+) tokens?'),
    converters={"n": int},
)
def submit_batch(scene: World, name: str, n: int) -> None:
    scene.submit(name, max_tokens=n, priority="batch")


@when(
    parsers.re(r"I submit tasks (?P<names>.+) for (?P<n>\d+) tokens? each"), converters={"n": int}
)
def submit_many(scene: World, names: str, n: int) -> None:
    for name in _names(names):
        scene.submit(name, max_tokens=n)


@when(parsers.parse('I submit a task whose max_tokens is "{value}"'))
def submit_malformed(scene: World, value: str) -> None:
    body = scene.body("malformed", max_tokens=value)
    scene.response = scene.client.post("/v1/tasks", json=body)


@when(parsers.parse("I submit a task placed with {placement}"))
def submit_placed(scene: World, placement: str) -> None:
    scene.submit("placed", max_tokens=1, placement=orjson.loads(placement))


# --- streams and cancel -------------------------------------------------------------------


@when(parsers.parse('I read the stream of task "{name}"'))
def read_stream(scene: World, name: str) -> None:
    scene.read_stream(name)


@when(parsers.parse('I read the stream of task "{name}" with micro-batching'))
def read_batched(scene: World, name: str) -> None:
    scene.read_stream(name, microbatch="true")


@when(parsers.parse('I cancel task "{name}"'))
def cancel(scene: World, name: str) -> None:
    scene.response = scene.client.post(f"/v1/tasks/{scene.task_id(name)}/cancel")


@when("I cancel a task nobody submitted")
def cancel_unknown(scene: World) -> None:
    scene.body("ghost")
    scene.response = scene.client.post(f"/v1/tasks/{scene.task_id('ghost')}/cancel")


def _read_until_first_token(scene: World, name: str, *, then_cancel: bool) -> None:
    frames: Frames = []
    url = f"/v1/tasks/{scene.task_id(name)}/stream"
    with connect_sse(scene.client, "GET", url, timeout=30.0) as source:
        events = source.iter_sse()
        for sse in events:
            frames.append((sse.event, orjson.loads(sse.data)))
            if sse.event == "token":
                break
        if not then_cancel:
            return  # leaving the block closes the connection: the reader hung up
        with httpx.Client(base_url=str(scene.client.base_url), headers=scene.headers) as other:
            scene.response = other.post(f"{url.removesuffix('/stream')}/cancel")
        assert 204 == scene.response.status_code
        frames.extend((sse.event, orjson.loads(sse.data)) for sse in events)
    scene.frames[name] = frames


@when(parsers.parse('I read task "{name}" until its first token, then cancel it and read on'))
def read_then_cancel(scene: World, name: str) -> None:
    _read_until_first_token(scene, name, then_cancel=True)


@when(parsers.parse('I read task "{name}" until its first token, then hang up'))
def read_then_hang_up(scene: World, name: str) -> None:
    _read_until_first_token(scene, name, then_cancel=False)


# --- sessions -----------------------------------------------------------------------------


@when(parsers.parse('I look up session "{name}"'))
def look_up_session(scene: World, name: str) -> None:
    scene.response = scene.client.get(f"/v1/sessions/{scene.session(name)}")


@when(parsers.parse('I look up the session "{raw}"'))
def look_up_raw_session(scene: World, raw: str) -> None:
    scene.response = scene.client.get(f"/v1/sessions/{raw}")


@when(parsers.parse('I forget session "{name}"'))
def forget_session(scene: World, name: str) -> None:
    scene.response = scene.client.delete(f"/v1/sessions/{scene.session(name)}")


# --- control plane ------------------------------------------------------------------------


@when("I ask for the capabilities")
def ask_capabilities(scene: World) -> None:
    scene.response = scene.client.get("/v1/capabilities")


@when(parsers.parse('I ask for the health of pool "{pool_id}"'))
def ask_health(scene: World, pool_id: str) -> None:
    scene.response = scene.client.get(f"/v1/pools/{pool_id}/health")


@when(parsers.parse('I ask for "{path}"'))
def ask_path(scene: World, path: str) -> None:
    scene.response = scene.client.get(path)


# --- outcomes -----------------------------------------------------------------------------


@then(parsers.parse("the answer is {status:d}"))
def answer_status(scene: World, status: int) -> None:
    assert status == _answer(scene).status_code, _answer(scene).text


@then(parsers.re(r"the answer is (?P<status>\d+) (?P<code>[A-Z_]+)"), converters={"status": int})
def answer_error(scene: World, status: int, code: str) -> None:
    response = _answer(scene)
    assert (status, code) == (response.status_code, response.json()["code"]), response.text
    assert response.json()["message"]


@then("the answer carries a correlation id")
def carries_correlation_id(scene: World) -> None:
    assert _answer(scene).headers.get("x-correlation-id")


@then("the refusal says when to retry")
def says_when(scene: World) -> None:
    response = _answer(scene)
    assert int(response.headers["retry-after"]) >= 1
    assert int(response.headers["x-backoff-ms"]) >= 0
    assert response.json()["retry_after_ms"] >= 0


@then(parsers.parse("the refusal is not retriable and is labelled {label}"))
def not_retriable(scene: World, label: str) -> None:
    body = _answer(scene).json()
    assert (False, label) == (body["retriable"], body["policy_label"])


@then(parsers.parse('the refusal mentions "{text}"'))
def refusal_mentions(scene: World, text: str) -> None:
    assert text in _answer(scene).json()["message"]


@then(parsers.parse('task "{name}" is admitted'))
def admitted(scene: World, name: str) -> None:
    response = scene.admissions[name]
    assert 202 == response.status_code, response.text


@then(parsers.parse('task "{name}" is admitted at queue position {n:d} with a predicted start'))
def admitted_at(scene: World, name: str, n: int) -> None:
    response = scene.admissions[name]
    assert 202 == response.status_code, response.text
    body = response.json()
    assert (n, scene.task_id(name)) == (body["queue_position"], body["task_id"])
    assert body["predicted_start_ms"] >= 0


@then(parsers.parse('task "{name}" is admitted to pool "{pool_id}"'))
def admitted_to(scene: World, name: str, pool_id: str) -> None:
    response = scene.admissions[name]
    assert (202, pool_id) == (response.status_code, response.json()["pool_id"]), response.text


@then(parsers.parse("the admission says {n:d} tokens remain"))
def tokens_remain(scene: World, n: int) -> None:
    assert str(n) == _answer(scene).headers["x-budget-tokens-remaining"]


@then(parsers.parse("the session has {n:d} tokens left after {turns:d} turn"))
def session_left(scene: World, n: int, turns: int) -> None:
    body = _answer(scene).json()
    assert (n, turns) == (body["tokens_budget_remaining"], body["turns"])


@then(parsers.parse('the stream of task "{name}" opens with started'))
def opens_with_started(scene: World, name: str) -> None:
    event, data = scene.frames[name][0]
    assert ("started", scene.task_id(name)) == (event, data["task_id"])


@then(parsers.parse('the stream of task "{name}" carries {n:d} tokens numbered from 0'))
def carries_tokens(scene: World, name: str, n: int) -> None:
    assert list(range(n)) == [t["i"] for t in _tokens(scene.frames[name])]


@then(parsers.parse('the stream of task "{name}" ends with end'))
def ends_with_end(scene: World, name: str) -> None:
    frames = scene.frames[name]
    assert "end" == frames[-1][0], frames[-1]
    assert 1 == sum(event in ("end", "error") for event, _ in frames)
    assert len(_tokens(frames)) == frames[-1][1]["tokens_out"]


@then(parsers.parse('the stream of task "{name}" ends with error {code}'))
def ends_with_error(scene: World, name: str, code: str) -> None:
    event, data = scene.frames[name][-1]
    assert ("error", code) == (event, data["code"])


@then(parsers.parse('the stream of task "{name}" ends canceled with no tokens'))
def canceled_without_tokens(scene: World, name: str) -> None:
    frames = scene.frames[name]
    assert ("end", True) == (frames[-1][0], frames[-1][1].get("canceled"))
    assert [] == _tokens(frames)


@then(parsers.parse('the stream of task "{name}" ends canceled with fewer than {n:d} tokens'))
def canceled_early(scene: World, name: str, n: int) -> None:
    frames = scene.frames[name]
    assert ("end", True) == (frames[-1][0], frames[-1][1].get("canceled"))
    assert 0 < len(_tokens(frames)) < n


@then(parsers.parse('tasks "{a}" and "{b}" streamed the same text'))
def same_text(scene: World, a: str, b: str) -> None:
    assert _text(scene.frames[a]) == _text(scene.frames[b])
    assert len(_tokens(scene.frames[b])) < len(_tokens(scene.frames[a]))


@then(parsers.parse('the queue of pool "{pool_id}" is empty'))
def queue_empty(scene: World, pool_id: str) -> None:
    scene.until(lambda: scene.health(pool_id)["metrics"]["queue_depth"] == 0, "an empty queue")


@then(parsers.parse('the slot of pool "{pool_id}" is free'))
def slot_free(scene: World, pool_id: str) -> None:
    scene.until(lambda: scene.health(pool_id)["active_leases"] == 0, "a free slot")


@then(parsers.re(r"the queue positions of (?P<names>.+) are (?P<positions>[\d, ]+)"))
def queue_positions(scene: World, names: str, positions: str) -> None:
    expected = [int(p) for p in positions.split(",")]
    assert expected == [scene.admissions[n].json()["queue_position"] for n in _names(names)]


@then(parsers.re(r"tasks (?P<names>.+) all stream to end"))
def all_end(scene: World, names: str) -> None:
    for name in _names(names):
        assert "end" == scene.read_stream(name)[-1][0]


@then(parsers.re(r"the capabilities list pools (?P<names>.+) with engine versions"))
def capabilities_list(scene: World, names: str) -> None:
    pools = {p["pool_id"]: p for p in _answer(scene).json()["pools"]}
    assert _names(names) == sorted(pools)
    assert all(p["engine_version"] for p in pools.values() if p["ready"])


@then(parsers.parse('pool "{pool_id}" is live and ready'))
def live_and_ready(scene: World, pool_id: str) -> None:
    health = scene.until(lambda: (h := scene.health(pool_id))["ready"] and h, "readiness")
    assert health["live"]


@then(parsers.parse('pool "{pool_id}" is not ready'))
def not_ready(scene: World, pool_id: str) -> None:
    assert not scene.health(pool_id)["ready"]
