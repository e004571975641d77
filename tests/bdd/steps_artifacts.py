"""Steps about artifacts and stream traces."""

from __future__ import annotations

from typing import Any

from pytest_bdd import parsers, then, when

from tests.bdd.world import World


def _plan(tag: str) -> dict[str, Any]:
    return {"kind": "plan", "tags": [tag], "content": {"steps": ["write the tests"]}}


@when(parsers.parse('I store a plan tagged "{tag}"'))
def store_plan(scene: World, tag: str) -> None:
    scene.extra["plan"] = _plan(tag)
    scene.response = scene.client.post("/v1/artifacts", json=scene.extra["plan"])
    if scene.response.status_code in (200, 201):
        scene.extra["artifact"] = scene.response.json()["id"]


@when("I store the same plan again")
def store_again(scene: World) -> None:
    scene.response = scene.client.post("/v1/artifacts", json=scene.extra["plan"])


@when("I fetch that artifact")
def fetch_that(scene: World) -> None:
    scene.response = scene.client.get(f"/v1/artifacts/{scene.extra['artifact']}")


@when(parsers.parse('I fetch the artifact "{raw}"'))
def fetch_raw(scene: World, raw: str) -> None:
    scene.response = scene.client.get(f"/v1/artifacts/{raw}")


@when(parsers.parse('I list the artifacts of task "{name}"'))
def list_of_task(scene: World, name: str) -> None:
    params = {"tag": f"task:{scene.task_id(name)}"}
    scene.response = scene.client.get("/v1/artifacts", params=params)


@then(parsers.parse("the answer is {status:d} with the same id"))
def same_id(scene: World, status: int) -> None:
    assert scene.response is not None
    assert (status, scene.extra["artifact"]) == (
        scene.response.status_code,
        scene.response.json()["id"],
    )


@then(parsers.parse('it holds the plan with tag "{tag}"'))
def holds_plan(scene: World, tag: str) -> None:
    assert scene.response is not None
    body = scene.response.json()
    assert ("plan", [tag], scene.extra["plan"]["content"]) == (
        body["kind"],
        body["tags"],
        body["content"],
    )


@then(parsers.parse('the listing holds the trace named by the end frame of task "{name}"'))
def listing_holds_trace(scene: World, name: str) -> None:
    assert scene.response is not None
    event, end = scene.frames[name][-1]
    items = scene.response.json()["items"]
    assert ("end", [end["trace_id"]]) == (event, [i["id"] for i in items])
    assert "trace" == items[0]["kind"]
