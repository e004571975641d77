"""Careless and hostile clients of the task API, the listings and the OpenAI and Ollama front
doors, against ``llorch serve``: each mistake is a 4xx naming what was wrong, never a 500, and a
field the peer API says to ignore changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.faults._raw import serve_config
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import mock_pool

MAX_TURNS = 2
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("hostile-clients")
    pool = mock_pool("p0", "m0", slots=2, supported_workloads=["completion", "embedding"])
    config = serve_config(pool, artifacts_dir=str(workdir / "artifacts"))
    config["sessions"] = {"max_turns": MAX_TURNS}
    with serve_process(config, workdir) as served:
        yield served
    log = served.log_path.read_text(encoding="utf-8")
    assert "Traceback" not in log
    assert '"level":"error"' not in log


@pytest.mark.parametrize(
    "limit",
    [
        "\u00b2",  # a superscript two: str.isdigit() says yes, int() says no
        "\u0661",  # an Arabic-Indic one
        "9" * 5000,  # past Python's int-from-string digit limit
        " 5",
        "+5",
        "5.0",
    ],
)
def test_an_artifact_page_size_that_is_not_ascii_digits_is_400(
    server: ServeProcess, limit: str
) -> None:
    answer = httpx.get(f"{server.url}/v1/artifacts", params={"limit": limit}, timeout=30)
    assert (400, "INVALID_PARAMS") == (answer.status_code, answer.json()["code"])
    assert "limit must be an integer from 1 to 500" in answer.json()["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m0", "messages": CHAT, "max_tokens": 2}),
        ("/v1/completions", {"model": "m0", "prompt": "hi", "max_tokens": 2}),
        ("/v1/embeddings", {"model": "m0", "input": "hi", "encoding_format": "float"}),
    ],
)
def test_the_openai_user_field_does_not_make_a_session_that_runs_out_of_turns(
    server: ServeProcess, path: str, body: dict[str, object]
) -> None:
    """``user`` is a deprecated end-user tag that OpenAI servers ignore: applications set it on
    every request, so it must not gather them into one session whose turn limit refuses the
    user's next request."""
    answers = [
        httpx.post(f"{server.url}{path}", json={**body, "user": "alice"}, timeout=30)
        for _ in range(MAX_TURNS + 1)
    ]
    assert [200] * (MAX_TURNS + 1) == [a.status_code for a in answers], answers[-1].text
