"""Request-level faults against ``llorch serve``: broken bodies, cross-site requests, forwarded
addresses, escaped prompts."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults._raw import connect, read_until_closed, serve_config, status_of
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import mock_pool, task_body

JSON_HEADERS = b"Content-Type: application/json\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    config = serve_config(
        allowed_hosts=["orch.internal"], allowed_origins=["http://console.example:3000"]
    )
    with serve_process(config, tmp_path_factory.mktemp("requests")) as served:
        yield served


def _raw(server: ServeProcess, request: bytes) -> bytes:
    with connect(server.url) as sock:
        sock.sendall(request)
        return read_until_closed(sock)


def _log_after(server: ServeProcess, mark: int) -> str:
    return server.log_path.read_bytes()[mark:].decode()


def _wait_for_log(
    server: ServeProcess, mark: int, wanted: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The JSON log lines written since ``mark``, once one of them is ``wanted`` (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        lines = [json.loads(line) for line in _log_after(server, mark).splitlines()]
        if any(wanted(line) for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _submit(server: ServeProcess) -> str:
    body = task_body(max_tokens=2000)
    response = httpx.post(f"{server.url}/v1/tasks", json=body, timeout=30)
    assert 202 == response.status_code, response.text
    return str(body["task_id"])


class TestBrokenBodies:
    """A client that stops mid-body or sends a bad chunk size made the mistake: 400, never 500."""

    @pytest.mark.parametrize("path", ["/v1/tasks", "/v1/tasks/{task}/cancel"])
    def test_a_malformed_chunk_size_is_400(self, server: ServeProcess, path: str) -> None:
        task = _submit(server)
        response = _raw(
            server,
            f"POST {path.format(task=task)} HTTP/1.1\r\nHost: localhost\r\n".encode()
            + JSON_HEADERS
            + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n",
        )
        assert 400 == status_of(response)
        assert b'"code":"INVALID_PARAMS"' in response
        assert b"ended early" in response
        if "cancel" in path:
            # Refused before the cancel was applied: the task still runs, and cancels later.
            cancel = httpx.post(f"{server.url}/v1/tasks/{task}/cancel", timeout=30)
            assert 204 == cancel.status_code

    @pytest.mark.parametrize("path", ["/v1/tasks", "/v1/tasks/{task}/cancel"])
    def test_a_client_that_leaves_mid_body_costs_one_info_line(
        self, server: ServeProcess, path: str
    ) -> None:
        task = _submit(server) if "{task}" in path else ""
        mark = server.log_path.stat().st_size
        with connect(server.url) as sock:
            sock.sendall(
                f"POST {path.format(task=task)} HTTP/1.1\r\nHost: localhost\r\n".encode()
                + JSON_HEADERS
                + b'Content-Length: 1000\r\n\r\n{"task_id'
            )
            sock.shutdown(socket.SHUT_RDWR)
        target = path.format(task=task)
        lines = _wait_for_log(server, mark, lambda line: line.get("target") == target)
        aborted = [line for line in lines if line.get("target") == target]
        assert [("info", 400)] == [(line["level"], line["status"]) for line in aborted]
        assert not [line for line in lines if line["level"] in ("error", "critical")]
        assert "Traceback" not in _log_after(server, mark)


class TestCrossSite:
    def test_a_body_that_is_not_json_typed_is_415(self, server: ServeProcess) -> None:
        body = json.dumps(task_body()).encode()
        plain = httpx.post(
            f"{server.url}/v1/tasks",
            content=body,
            headers={"Content-Type": "text/plain"},
            timeout=30,
        )
        charset = httpx.post(
            f"{server.url}/v1/tasks",
            content=json.dumps(task_body()).encode(),
            headers={"Content-Type": "application/json; charset=utf-8"},
            timeout=30,
        )
        assert (415, "INVALID_PARAMS") == (plain.status_code, plain.json()["code"])
        assert 202 == charset.status_code

    @pytest.mark.parametrize("path", ["/v1/tasks", "/v1/chat/completions", "/api/generate"])
    def test_a_compressed_body_is_415_naming_the_coding(
        self, server: ServeProcess, path: str
    ) -> None:
        """The body is read as sent: a gzipped one is refused up front (RFC 9110 §15.5.16),
        not parsed as broken JSON; ``identity`` is no coding at all."""
        body = json.dumps(task_body()).encode()
        headers = {"Content-Type": "application/json"}
        gzipped = httpx.post(
            f"{server.url}{path}",
            content=gzip.compress(body),
            headers={**headers, "Content-Encoding": "gzip"},
            timeout=30,
        )
        identity = httpx.post(
            f"{server.url}/v1/tasks",
            content=body,
            headers={**headers, "Content-Encoding": "identity"},
            timeout=30,
        )
        assert 415 == gzipped.status_code
        # In the error shape of the route's API: the task API's, OpenAI's, Ollama's.
        refusal = gzipped.json()
        message = {
            "/v1/tasks": lambda: refusal["message"],
            "/v1/chat/completions": lambda: refusal["error"]["message"],
            "/api/generate": lambda: refusal["error"],
        }[path]()
        assert "Content-Encoding 'gzip' is not supported" in message
        assert path != "/v1/tasks" or "INVALID_PARAMS" == refusal["code"]
        assert "identity" == gzipped.headers["accept-encoding"]
        assert "x-correlation-id" in gzipped.headers
        assert 202 == identity.status_code

    @pytest.mark.parametrize(
        ("host", "status"),
        [
            ("localhost", 200),
            ("LOCALHOST:8080", 200),
            ("127.0.0.1:1", 200),
            ("[::1]:8080", 200),
            ("orch.internal", 200),
            ("rebound.attacker.example", 421),
            ("rebound.attacker.example:8080", 421),
        ],
    )
    def test_a_loopback_bind_serves_loopback_and_configured_host_names_only(
        self, server: ServeProcess, host: str, status: int
    ) -> None:
        response = httpx.get(f"{server.url}/v1/capabilities", headers={"Host": host}, timeout=30)
        assert status == response.status_code

    @pytest.mark.parametrize(
        ("origin", "status"),
        [
            (None, 200),
            ("SAME", 200),
            ("http://console.example:3000", 200),
            ("http://attacker.example", 403),
            ("null", 403),
        ],
    )
    def test_foreign_origins_are_refused_unless_configured(
        self, server: ServeProcess, origin: str | None, status: int
    ) -> None:
        headers = {} if origin is None else {"Origin": origin.replace("SAME", server.url)}
        response = httpx.post(
            f"{server.url}/v1/tasks", json=task_body(), headers=headers, timeout=30
        )
        assert (status == 200 and response.status_code == 202) or status == response.status_code

    def test_a_page_on_an_allowed_origin_can_call_the_api(self, server: ServeProcess) -> None:
        """A browser sends a preflight before it posts JSON across origins, and lets the page
        read an answer only when it names the origin: an allowed origin gets both."""
        origin = "http://console.example:3000"
        preflight = httpx.options(
            f"{server.url}/v1/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, authorization, x-priority",
            },
            timeout=30,
        )
        answer = httpx.post(
            f"{server.url}/v1/tasks", json=task_body(), headers={"Origin": origin}, timeout=30
        )
        foreign = httpx.options(
            f"{server.url}/v1/tasks",
            headers={"Origin": "http://attacker.example", "Access-Control-Request-Method": "POST"},
            timeout=30,
        )
        assert 200 == preflight.status_code, preflight.text
        assert origin == preflight.headers["access-control-allow-origin"]
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert {"content-type", "authorization", "x-priority"} <= set(allowed.split(", "))
        assert 202 == answer.status_code
        assert origin == answer.headers["access-control-allow-origin"]
        assert "x-task-id" in answer.headers["access-control-expose-headers"].lower()
        assert 403 == foreign.status_code
        assert "access-control-allow-origin" not in foreign.headers

    def test_the_trailing_slash_redirect_is_relative(self, server: ServeProcess) -> None:
        response = _raw(
            server,
            b"GET /v1/capabilities/?x=1 HTTP/1.1\r\nHost: orch.internal\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert 307 == status_of(response)
        assert b"\r\nlocation: /v1/capabilities?x=1\r\n" in response.lower()

    def test_no_redirect_leads_off_the_server(self, server: ServeProcess) -> None:
        response = _raw(
            server,
            b"GET //attacker.example/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        assert 404 == status_of(response)


class TestForwardedFor:
    def test_every_x_forwarded_for_line_counts_and_the_last_hop_is_judged(
        self, tmp_path: Path
    ) -> None:
        environ = {
            "AUTH_TOKEN": "t" * 40,
            "AUTH_OPTIONAL": "true",
            "TRUST_PROXY_AUTH": "true",
        }
        with serve_process(serve_config(), tmp_path, environ=environ) as served:
            spoofed = _raw(
                served,
                b"GET /v1/capabilities HTTP/1.1\r\nHost: localhost\r\n"
                b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-For: 192.168.1.50\r\n"
                b"Connection: close\r\n\r\n",
            )
            joined = _raw(
                served,
                b"GET /v1/capabilities HTTP/1.1\r\nHost: localhost\r\n"
                b"X-Forwarded-For: 127.0.0.1, 192.168.1.50\r\nConnection: close\r\n\r\n",
            )
            local = _raw(
                served,
                b"GET /v1/capabilities HTTP/1.1\r\nHost: localhost\r\n"
                b"X-Forwarded-For: 192.168.1.50\r\nX-Forwarded-For: 127.0.0.1\r\n"
                b"Connection: close\r\n\r\n",
            )
        assert [403, 403, 200] == [status_of(r) for r in (spoofed, joined, local)]


class TestEscapedPrompts:
    def test_a_prompt_within_the_limit_is_accepted_however_it_is_escaped(
        self, tmp_path: Path
    ) -> None:
        """25,000 emoji are 100,000 UTF-8 bytes, but 300,000 bytes of JSON once ASCII-escaped."""
        pool = mock_pool(ctx=131_072, mock={"ctx_max": 131_072})
        config = serve_config(pool, max_prompt_bytes=100_000)
        prompt = "\U0001f600" * 25_000
        body = task_body(prompt=prompt, ctx=131_072)
        escaped = json.dumps(body, ensure_ascii=True).encode()
        assert len(escaped) > 300_000
        over_body = task_body(prompt=prompt + "x", ctx=131_072)
        over = json.dumps(over_body, ensure_ascii=True).encode()
        with serve_process(config, tmp_path) as served:
            headers = {"Content-Type": "application/json"}
            ok = httpx.post(f"{served.url}/v1/tasks", content=escaped, headers=headers)
            too_long = httpx.post(f"{served.url}/v1/tasks", content=over, headers=headers)
        assert 202 == ok.status_code, ok.text
        assert 400 == too_long.status_code
        assert "prompt is 100001 bytes" in too_long.json()["message"]


def test_an_http2_authority_is_checked_like_a_host(server: ServeProcess) -> None:
    with httpx.Client(http1=False, http2=True, base_url=server.url, timeout=30) as client:
        foreign = client.get("/v1/capabilities", headers={"Host": "rebound.attacker.example"})
        local = client.get("/v1/capabilities")
    assert [("HTTP/2", 421), ("HTTP/2", 200)] == [
        (r.http_version, r.status_code) for r in (foreign, local)
    ]
