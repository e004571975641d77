"""The auth and correlation middleware on an inline ASGI app, with the peer address injected."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from llama_orch.auth.policy import AuthPolicy
from llama_orch.auth.tokens import token_identity
from llama_orch.observability.redaction import Redactor
from llama_orch.server.middleware import OFF_LOOP_BYTES, AuthMiddleware, CorrelationMiddleware
from tests.support.narration import NarrationLog

TOKEN = "tok-0123456789abcdef"
LAN = ("192.168.1.20", 50000)
LOOPBACK = ("127.0.0.1", 50000)


async def echo_identity(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the identity the middleware set, in three body chunks."""
    identity = scope["state"]["identity"].encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for part in (b"identity=", identity, b""):
        await send({"type": "http.response.body", "body": part, "more_body": part != b""})


def leaky(status: int, body: bytes, content_type: bytes = b"application/json") -> ASGIApp:
    """Answers ``body`` in two chunks, or in one whole chunk for SSE (frames are never split)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", content_type)]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        half = len(body) if content_type.startswith(b"text/event-stream") else len(body) // 2
        await send({"type": "http.response.body", "body": body[:half], "more_body": True})
        await send({"type": "http.response.body", "body": body[half:]})

    return app


def stack(policy: AuthPolicy, app: ASGIApp = echo_identity, secrets: Sequence[str] = ()) -> ASGIApp:
    return CorrelationMiddleware(AuthMiddleware(app, policy), Redactor(tuple(secrets)))


async def call(
    app: ASGIApp,
    client: tuple[str, int],
    headers: dict[str, str] | None = None,
    path: str = "/metrics",
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://orch") as http:
        return await http.get(path, headers=headers or {})


class TestAuthMiddleware:
    async def test_loopback_open_default(self) -> None:
        """With no token configured a loopback peer passes as localhost."""
        response = await call(stack(AuthPolicy()), LOOPBACK)
        assert (200, "identity=localhost") == (response.status_code, response.text)

    async def test_token_identity_reaches_the_app(self) -> None:
        """A matching token is passed on as token:<fp6>."""
        response = await call(stack(AuthPolicy(TOKEN)), LAN, {"Authorization": f"Bearer {TOKEN}"})
        assert f"identity={token_identity(TOKEN)}" == response.text

    async def test_non_loopback_without_token_is_403(self) -> None:
        """A LAN peer of a tokenless server gets 403 40301 with hint and correlation ID."""
        response = await call(stack(AuthPolicy()), LAN, {"X-Correlation-Id": "cid-1"})
        body = response.json()
        assert (403, "NON_LOOPBACK_WITHOUT_TOKEN", 40301, "cid-1") == (
            response.status_code,
            body["code"],
            body["code_id"],
            body["correlation_id"],
        )
        assert body["hint"] and "cid-1" == response.headers["x-correlation-id"]

    async def test_spoofed_forwarded_for_is_ignored(self) -> None:
        """X-Forwarded-For: 127.0.0.1 from an untrusted LAN peer earns no loopback exemption."""
        response = await call(
            stack(AuthPolicy(TOKEN, optional=True)), LAN, {"X-Forwarded-For": "127.0.0.1"}
        )
        assert (401, "MISSING_TOKEN") == (response.status_code, response.json()["code"])
        assert response.headers["www-authenticate"].startswith("Bearer")

    async def test_trusted_proxy_forwarded_client_needs_token(self) -> None:
        """Behind a trusted proxy, a forwarded LAN client is not loopback (AUTH_OPTIONAL)."""
        policy = AuthPolicy(TOKEN, optional=True, trust_proxy=True)
        forwarded = await call(stack(policy), LOOPBACK, {"X-Forwarded-For": LAN[0]})
        local = await call(stack(policy), LOOPBACK)
        assert (401, 200) == (forwarded.status_code, local.status_code)

    async def test_no_path_is_exempt(self) -> None:
        """/metrics, health and capabilities all need the token (D-AUTH-03)."""
        policy = AuthPolicy(TOKEN)
        paths = ["/metrics", "/v1/capabilities", "/v1/pools/p0/health", "/openapi/data.yaml"]
        statuses = [(await call(stack(policy), LOOPBACK, path=p)).status_code for p in paths]
        assert [401] * len(paths) == statuses

    async def test_refusal_is_logged_without_the_token(self, narration: NarrationLog) -> None:
        """A BAD_TOKEN refusal is narrated, and the access log says anonymous."""
        await call(stack(AuthPolicy(TOKEN)), LAN, {"Authorization": "Bearer wrong-token"})
        refusal = narration.one("refuse")
        access = narration.one("request")
        assert ("BAD_TOKEN", 40102, "anonymous", 401) == (
            refusal["error_kind"],
            refusal["code_id"],
            access["identity"],
            access["status"],
        )
        assert "wrong-token" not in str(narration.entries)

    async def test_access_log_carries_identity(self, narration: NarrationLog) -> None:
        """Every logged request carries identity and a human sentence (AUTH-1008)."""
        await call(stack(AuthPolicy(TOKEN)), LAN, {"Authorization": f"Bearer {TOKEN}"})
        await call(stack(AuthPolicy()), LOOPBACK)
        assert [token_identity(TOKEN), "localhost"] == [
            e["identity"] for e in narration.events("request")
        ]
        assert all(h.startswith("Answers GET /metrics with 200") for h in narration.humans())


class TestRedactingSend:
    async def test_error_body_loses_known_secret_and_patterns(self) -> None:
        """An error body echoing a secret, a bearer header and URL credentials is redacted."""
        leak = (
            b'{"code":"INTERNAL","message":"upstream https://u:pw@engine/x said '
            b'Bearer abc.def.ghi for key sk-proj-0123456789 and tok-0123456789abcdef"}'
        )
        response = await call(stack(AuthPolicy(), leaky(500, leak), [TOKEN]), LOOPBACK)
        text = response.text
        for secret in ("u:pw", "abc.def.ghi", "sk-proj-0123456789", TOKEN):
            assert secret not in text
        assert "INTERNAL" == response.json()["code"]
        assert str(len(response.content)) == response.headers["content-length"]

    async def test_sse_error_frame_is_redacted(self) -> None:
        """An SSE error frame naming the secret reaches the client redacted."""
        frames = b'event: error\ndata: {"message":"engine said tok-0123456789abcdef"}\n\n'
        app = leaky(200, frames, b"text/event-stream")
        response = await call(stack(AuthPolicy(), app, [TOKEN]), LOOPBACK)
        assert TOKEN not in response.text
        assert response.text.startswith("event: error\ndata: ")

    async def test_successful_json_is_redacted_but_prose_kept(self) -> None:
        """A 200 JSON body (pool health's last_error) is redacted too; prose is left alone."""
        body = b'{"last_error":"engine said tok-0123456789abcdef","note":"Bearer is a word"}'
        response = await call(stack(AuthPolicy(), leaky(200, body), [TOKEN]), LOOPBACK)
        expected = {"last_error": "engine said [REDACTED]", "note": "Bearer is a word"}
        assert expected == response.json()


class TestLargeBodies:
    async def test_the_loop_runs_while_a_large_body_is_redacted(self) -> None:
        """A large JSON answer (a trace artifact, a long event list) is redacted off the event
        loop: a coroutine counting the loop's turns advances while the app's last send, the
        one that redacts, is pending; every secret in the body is still caught."""
        turns = 0
        running = True

        async def count_turns() -> None:
            nonlocal turns
            while running:
                turns += 1
                await asyncio.sleep(0)

        items = b",".join(
            b'{"id": %d, "source": "https://u:p4ss%d@engine/x", "text": "%s"}' % (i, i, b"t" * 40)
            for i in range(OFF_LOOP_BYTES // 50)
        )
        body = b'{"items": [' + items + b'], "key": "sk-proj-0123456789abcdef"}'
        turns_while_redacting: list[int] = []

        async def large(scope: Scope, receive: Receive, send: Send) -> None:
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body[:100], "more_body": True})
            before = turns
            await send({"type": "http.response.body", "body": body[100:]})
            turns_while_redacting.append(turns - before)

        counter = asyncio.create_task(count_turns())
        try:
            response = await call(stack(AuthPolicy(), large, [TOKEN]), LOOPBACK)
        finally:
            running = False
            await counter
        assert turns_while_redacting[0] > 0
        assert "p4ss" not in response.text and "sk-proj" not in response.text
        assert OFF_LOOP_BYTES // 50 == len(response.json()["items"])


class TestUnexpectedErrors:
    async def test_crash_after_json_start_still_answers_500(self, narration: NarrationLog) -> None:
        """An app that fails between a JSON start and its body still gets a clean 500."""

        async def crashing(scope: Scope, receive: Receive, send: Send) -> None:
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            raise RuntimeError("boom")

        response = await call(stack(AuthPolicy(), crashing), LOOPBACK)
        assert (500, "INTERNAL") == (response.status_code, response.json()["code"])
        assert response.headers["x-correlation-id"]
        assert "boom" not in response.text
        assert 1 == len(narration.events("error", log_level="error"))
