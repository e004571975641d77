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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("hostile-clients")
    config = serve_config(mock_pool("p0", "m0", slots=2), artifacts_dir=str(workdir / "artifacts"))
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
