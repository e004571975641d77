"""Every answer of ``llorch serve`` carries ``X-Correlation-Id``: each route's success, its
refusals, 204s, redirects and the guards' answers, echoing the ID the client sent."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import SIMULATED_GPUS, mock_pool, task_body

TOKEN = "correlation-suite-token-0a1b2c3d"
_IDS = itertools.count()
UNKNOWN = "11111111-1111-4111-8111-111111111111"

#: Every route with a request it refuses cheaply (unknown id, empty body, wrong method).
ROUTES: list[tuple[str, str]] = [
    ("POST", "/v1/tasks"),
    ("GET", f"/v1/tasks/{UNKNOWN}/stream"),
    ("POST", f"/v1/tasks/{UNKNOWN}/cancel"),
    ("GET", f"/v1/sessions/{UNKNOWN}"),
    ("DELETE", "/v1/sessions/not-a-uuid"),
    ("GET", "/v1/capabilities"),
    ("GET", "/v1/pools/nope/health"),
    ("POST", "/v1/pools/nope/drain"),
    ("POST", "/v1/pools/nope/reload"),
    ("GET", "/metrics"),
    ("GET", "/openapi/data.yaml"),
    ("GET", "/openapi/nope.yaml"),
    ("GET", "/v1/catalog/models"),
    ("POST", "/v1/catalog/models"),
    ("GET", "/v1/catalog/models/nope"),
    ("DELETE", "/v1/catalog/models/nope"),
    ("POST", "/v1/catalog/models/nope/verify"),
    ("POST", "/v1/catalog/models/nope/state"),
    ("GET", "/v1/status"),
    ("GET", "/v1/artifacts"),
    ("POST", "/v1/artifacts"),
    ("GET", f"/v1/artifacts/{UNKNOWN}"),
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/ui/nope.js"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/nope"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/rerank"),
    ("POST", "/api/generate"),
    ("POST", "/api/chat"),
    ("GET", "/api/tags"),
    ("HEAD", "/api/tags"),
    ("GET", "/api/ps"),
    ("POST", "/api/show"),
    ("GET", "/api/version"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("PUT", "/v1/tasks"),
    ("GET", "/no/such/route"),
    ("GET", "/v1/capabilities/"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("correlation")
    (workdir / "token").write_text(TOKEN)
    config = {
        "gpus": SIMULATED_GPUS,
        "pools": [mock_pool("p0", "m0")],
        "server": {"artifacts_dir": str(workdir / "artifacts")},
    }
    with serve_process(config, workdir, environ={"AUTH_TOKEN_FILE": str(workdir / "token")}) as s:
        yield s


@pytest.fixture
def client(server: ServeProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:
        yield c


def _cid() -> str:
    return f"probe-{next(_IDS)}"


def _echoed(
    client: httpx.Client,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    json: Any = None,
    content: bytes | None = None,
) -> int:
    """Sends one request with a fresh ID; asserts the answer echoes it; returns its status."""
    cid = _cid()
    sent = {"X-Correlation-Id": cid, **(headers or {})}
    with client.stream(method, path, headers=sent, json=json, content=content) as response:
        # Headers are enough: a stream (SSE) is not read to its end.
        got = response.headers.get("x-correlation-id")
        status = response.status_code
    assert cid == got, f"{method} {path} answered {status} without its correlation ID"
    return status


def test_every_route_echoes_the_id(client: httpx.Client) -> None:
    """Each route's answer to a cheap request (mostly a refusal) echoes the ID."""
    statuses = {}
    for method, path in ROUTES:
        body: dict[str, Any] | None = {} if method == "POST" else None
        statuses[method, path] = _echoed(client, method, path, json=body)
    assert {200, 307, 400, 404, 405} <= set(statuses.values())


def test_success_answers_echo_the_id(client: httpx.Client) -> None:
    """202 admission, the 200 SSE stream, the 204 cancel, the 200 session and its 204 DELETE."""
    body = task_body(max_tokens=2000)
    assert 202 == _echoed(client, "POST", "/v1/tasks", json=body)
    task_id, session_id = body["task_id"], body["session_id"]
    assert 200 == _echoed(client, "GET", f"/v1/tasks/{task_id}/stream")
    assert 204 == _echoed(client, "POST", f"/v1/tasks/{task_id}/cancel")
    assert 204 == _echoed(client, "POST", f"/v1/tasks/{task_id}/cancel")
    assert 200 == _echoed(client, "GET", f"/v1/sessions/{session_id}")
    assert 204 == _echoed(client, "DELETE", f"/v1/sessions/{session_id}")
    assert 409 == _echoed(client, "POST", "/v1/tasks", json=body)
    assert 200 == _echoed(client, "GET", "/v1/events")


def test_refusals_before_routing_echo_the_id(client: httpx.Client) -> None:
    """Auth, Host and Origin refusals and unparseable bodies echo the ID too."""
    bad_token = {"Authorization": "Bearer wrong"}
    assert 401 == _echoed(client, "GET", "/v1/capabilities", headers=bad_token)
    foreign_host = {"Host": "evil.example"}
    assert _echoed(client, "GET", "/v1/capabilities", headers=foreign_host) in (400, 421)
    foreign_origin = {"Origin": "http://evil.example", "Content-Type": "application/json"}
    assert 403 == _echoed(client, "POST", "/v1/tasks", headers=foreign_origin, content=b"{}")
    broken = {"Content-Type": "application/json"}
    assert 400 == _echoed(client, "POST", "/v1/tasks", headers=broken, content=b"{nope")


def test_a_204_without_an_id_gets_a_minted_one(client: httpx.Client) -> None:
    """With no ID sent, a 204 carries a fresh UUIDv4 like every other answer."""
    body = task_body(max_tokens=2000)
    assert 202 == client.post("/v1/tasks", json=body).status_code
    response = client.post(f"/v1/tasks/{body['task_id']}/cancel")
    assert 204 == response.status_code
    assert 4 == uuid.UUID(response.headers["x-correlation-id"]).version
