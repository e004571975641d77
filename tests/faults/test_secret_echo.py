"""Answers that quote a model never quote a signed URL's credentials.

A model named by a pre-signed download link (S3, Google Cloud Storage) carries its signature and
session token in the query string. Front doors refuse an unknown model with its name in the
message, and the console shows each pool's model; like ``?token=`` and ``?sig=``, those
parameters come back redacted, on the console's event feed as on every JSON answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.faults._raw import serve_config
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import SIMULATED_GPUS, mock_pool, task_body

SIGNATURE = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
SESSION_TOKEN = "FwoGZXIvYXdzEJr4SESSIONtoken0aBcD"
GOOGLE_SIGNATURE = "5b1e0c7d9a3f8e2d4c6b0a9f8e7d6c5b4a3f2e1d"
PRESIGNED = (
    "https://models.s3.amazonaws.com/llama.gguf?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261130%2Fus-east-1%2Fs3%2Faws4_request"
    f"&X-Amz-Date=20261130T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token={SESSION_TOKEN}"
    f"&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}"
)
GOOGLE = (
    "https://storage.googleapis.com/models/llama.gguf?X-Goog-Algorithm=GOOG4-RSA-SHA256"
    f"&X-Goog-Expires=900&X-Goog-Signature={GOOGLE_SIGNATURE}"
)
SECRETS = (SIGNATURE, SESSION_TOKEN, GOOGLE_SIGNATURE)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serve_process(serve_config(), tmp_path_factory.mktemp("secret-echo")) as s:
        yield s


class TestSignedUrls:
    @pytest.mark.parametrize("model", [PRESIGNED, GOOGLE], ids=["s3", "gcs"])
    def test_unknown_model_refusals_redact_the_signature(
        self, server: ServeProcess, model: str
    ) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            answers = [
                client.post(
                    "/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                ),
                client.post("/api/generate", json={"model": model, "prompt": "hi"}),
                client.post("/api/show", json={"model": model}),
            ]
        for answer in answers:
            assert 404 == answer.status_code, answer.text
            # Still names the model it refused, the part that holds no secret.
            assert model.split("?", 1)[0] in answer.text
            assert [s for s in SECRETS if s in answer.text] == [], answer.text
            assert "[REDACTED]" in answer.text


class TestConsoleFeed:
    def test_the_event_feed_redacts_what_the_status_redacts(
        self, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        """A pool configured with a pre-signed link: ``/v1/status`` and ``/v1/events`` both
        show the pool, neither the link's signature or token."""
        config = {"gpus": SIMULATED_GPUS, "pools": [mock_pool("signed", PRESIGNED)]}
        with (
            serve_process(config, tmp_path_factory.mktemp("feed")) as server,
            httpx.Client(base_url=server.url, timeout=10) as client,
        ):
            status = client.get("/v1/status").text
            with client.stream("GET", "/v1/events") as response:
                feed = b""
                for chunk in response.iter_bytes():
                    feed += chunk
                    # The first frames hold every section; the task section comes last.
                    if b"event: task\n" in feed and feed.endswith(b"\n\n"):
                        break
        for text in (status, feed.decode()):
            assert '"pool_id":"signed"' in text
            assert [s for s in SECRETS if s in text] == []


class TestCutSentences:
    def test_a_cut_log_sentence_keeps_no_part_of_the_token(
        self, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        """Log sentences are cut to a bound. A client that sends its bearer token as part of a
        long model name (a pasted command line) has it quoted by the refusal; wherever the cut
        falls, no part of the token is left in the log: the sentence is redacted, then cut."""
        token = "Xq7vK2mPzR9tLw4sNb6yHc1dJf8gUe3a"
        workdir = tmp_path_factory.mktemp("cut")
        (workdir / "token").write_text(token)
        environ = {"AUTH_TOKEN_FILE": str(workdir / "token")}
        headers = {"Authorization": f"Bearer {token}"}
        with (
            serve_process(serve_config(), workdir, environ=environ) as server,
            httpx.Client(base_url=server.url, timeout=10, headers=headers) as client,
        ):
            # Paddings that put the end of every cut up to 320 characters inside the token.
            for pad in range(40, 320, len(token) // 2):
                answer = client.post("/v1/tasks", json=task_body("m" * pad + token))
                assert 503 == answer.status_code, answer.text
                assert token[:8] not in answer.text
            last = client.get("/v1/capabilities")
            assert 200 == last.status_code
            marker = last.headers["x-correlation-id"]
            deadline = time.monotonic() + 10
            while marker not in (log := server.log_path.read_text()):
                assert time.monotonic() < deadline, "the last request was never logged"
                time.sleep(0.05)
        assert "Refuses task" in log
        assert [line for line in log.splitlines() if token[:8] in line] == []
