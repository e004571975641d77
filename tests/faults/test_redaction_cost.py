"""Redaction reads every JSON answer, so its cost must grow with the text's length, not its
square: a stored artifact (or an engine's output in a trace) shaped to make the URL-credentials
pattern backtrack would otherwise hold the event loop, and every other client, for minutes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from llama_orch.observability.redaction import REDACTED, Redactor
from tests.faults._raw import serve_config
from tests.support.serve_process import ServeProcess, serve_process

#: Word boundaries at every other character, and one "://" at the very end: each boundary
#: was a start from which the scheme pattern scanned to the end (quadratic in the length).
HOSTILE = "a." * 200_000 + "://x"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("redaction-cost")
    with serve_process(serve_config(artifacts_dir=str(workdir / "artifacts")), workdir) as s:
        yield s


class TestRedactionCost:
    def test_a_backtracking_shaped_artifact_is_answered(self, server: ServeProcess) -> None:
        """Stored, then read back whole (the read passes the answer redaction); while the
        scan is linear this takes milliseconds, where the quadratic one took many minutes."""
        with httpx.Client(base_url=server.url, timeout=60) as client:
            document = {"kind": "other", "content": {"text": HOSTILE}}
            stored = client.post("/v1/artifacts", json=document)
            assert 201 == stored.status_code, stored.text
            read = client.get(f"/v1/artifacts/{stored.json()['id']}")
            assert 200 == read.status_code
            assert HOSTILE == read.json()["content"]["text"]

    def test_url_credentials_are_still_redacted(self) -> None:
        """Bounding the scheme's length keeps every credential it found: a long run of
        letters before the scheme is left as it is, the credentials after it are not."""
        redactor = Redactor()
        assert f"see https://{REDACTED}@h/x" == redactor.text("see https://u:secret1@h/x")
        prefix = "x" * 100
        assert f"{prefix}https://{REDACTED}@h" == redactor.text(f"{prefix}https://u:pw@h")
