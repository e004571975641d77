from __future__ import annotations

import asyncio

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


#: Catalog refusals: the model catalog raises them (a retired model, an unverified artifact).
CATALOG_KINDS = {errors.ErrorKind.MODEL_DEPRECATED, errors.ErrorKind.UNTRUSTED_ARTIFACT}


def raised_kinds() -> set[errors.ErrorKind]:
    """Kinds whose error class the package instantiates somewhere outside errors.py."""
    import ast
    from pathlib import Path

    import llama_orch

    classes = {
        cls.__name__: cls.kind
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.OrchError) and "kind" in vars(cls)
    }
    found: set[errors.ErrorKind] = set()
    for path in Path(llama_orch.__file__).parent.rglob("*.py"):
        if path.name == "errors.py" and path.parent.name == "llama_orch":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in classes:
                    found.add(classes[name])
    return found


class TestErrorKinds:
    def test_every_kind_is_raised_somewhere(self) -> None:
        """No error kind is speculative: each one is raised by some module (catalog kinds
        by the catalog)."""
        assert set() == set(errors.ErrorKind) - raised_kinds() - CATALOG_KINDS

    def test_render_leaves_the_error_untouched(self) -> None:
        """Rendering a 429 fills the backoff in the answer, not in the error object."""
        error = errors.AdmissionRejected("full")
        body = orjson.loads(error_response(error).body)
        assert (1000, "reject") == (body["retry_after_ms"], body["policy_label"])
        assert (None, None) == (error.retry_after_ms, error.policy_label)

    def test_http_refusals_keep_their_status_in_the_envelope(self) -> None:
        """A 405 from routing keeps its status and carries the typed envelope."""
        from starlette.exceptions import HTTPException

        from llama_orch.server.errors import handle_http_exception

        response = asyncio.run(handle_http_exception(None, HTTPException(405)))  # type: ignore[arg-type]
        assert (405, "INVALID_PARAMS") == (
            response.status_code,
            orjson.loads(response.body)["code"],
        )
