from __future__ import annotations

import orjson
import pytest

from llama_orch import errors
from llama_orch.server.errors import STATUS, error_response


class TestErrorMapping:
    def test_every_kind_has_a_status(self) -> None:
        """Each ErrorKind maps to exactly one HTTP status."""
        assert set(errors.ErrorKind) == set(STATUS)

    @pytest.mark.parametrize(
        ("error", "status", "retriable"),
        [
            (errors.InvalidParams("x"), 400, False),
            (errors.DeadlineUnmet("x"), 400, False),
            (errors.NotFound("x"), 404, False),
            (errors.Conflict("x"), 409, False),
            (errors.AdmissionRejected("x", retry_after_ms=1500), 429, True),
            (errors.QueueFullDropLru("x", retry_after_ms=10), 429, True),
            (errors.PoolUnready("x"), 503, True),
            (errors.PoolUnavailable("x"), 503, True),
            (errors.InternalError("x"), 500, False),
            (errors.MissingToken("x"), 401, False),
            (errors.BadToken("x"), 401, False),
            (errors.NonLoopbackWithoutToken("x"), 403, False),
        ],
    )
    def test_status_code_and_retriable(
        self, error: errors.OrchError, status: int, retriable: bool
    ) -> None:
        """HTTP status, code and retriable agree with the spec table (ORCH-3254)."""
        response = error_response(error)
        body = orjson.loads(response.body)
        assert (status, error.kind.value, retriable) == (
            response.status_code,
            body["code"],
            body["retriable"],
        )

    def test_429_carries_backoff_headers(self) -> None:
        """A 429 has Retry-After in whole seconds (rounded up) and X-Backoff-Ms."""
        response = error_response(
            errors.AdmissionRejected("full", retry_after_ms=1500, policy_label="reject")
        )
        assert ("2", "1500") == (response.headers["retry-after"], response.headers["x-backoff-ms"])
        body = orjson.loads(response.body)
        assert ("reject", 1500) == (body["policy_label"], body["retry_after_ms"])

    def test_auth_errors_carry_numeric_code(self) -> None:
        """Auth envelopes add code_id (40101/40102/40301)."""
        assert 40102 == orjson.loads(error_response(errors.BadToken("x")).body)["code_id"]
