"""Hostile input against the production server stack: every bad request gets a typed 4xx (or is
refused by the HTTP layer), the server keeps serving, and no secret reaches its log."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import SIMULATED_GPUS, mock_pool, task_body

TOKEN = "hostile-suite-token-5e4d3c2b1a09"
FORGED = "sk-live-0123456789abcdef0123456789abcdef"
#: A token of no known shape, which only its place in a URL marks as a secret.
URL_TOKEN = "q7Zr2Lx9Wm4Kp8VtY3nB"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("hostile")
    (workdir / "token").write_text(TOKEN)
    config = {
        "gpus": SIMULATED_GPUS,
        "pools": [mock_pool("p0", "m0")],
        "server": {"artifacts_dir": str(workdir / "artifacts")},
    }
    env = {"AUTH_TOKEN_FILE": str(workdir / "token"), "AUTH_OPTIONAL": "true"}
    with serve_process(config, workdir, environ=env) as proc:
        yield proc
    log = proc.log_path.read_text(encoding="utf-8")
    assert TOKEN not in log and FORGED not in log, "a secret reached the log"
    assert "Traceback" not in log


def raw(server: ServeProcess, request: bytes) -> bytes:
    """Send ``request`` as is and return whatever comes back before the server closes."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and b"connection: close" not in data.lower():
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = re.search(rb"content-length: (\d+)", head.lower())
                    if length and len(body) >= int(length.group(1)):
                        break
        except (TimeoutError, ConnectionResetError):
            pass
    return data


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def post_raw(path: str, body: bytes, headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n"
    ).encode() + body


class TestHostileInput:
    def test_oversize_body(self, server: ServeProcess) -> None:
        """A body past the limit is refused with a typed 400/413 naming the limit."""
        body = task_body(prompt="x" * 3_000_000)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = client.post("/v1/tasks", json=body)
        assert response.status_code in (400, 413)
        assert "INVALID_PARAMS" == response.json()["code"]

    def test_oversize_headers(self, server: ServeProcess) -> None:
        """Huge headers are refused by the HTTP layer with a 4xx (or the connection closes)."""
        request = (
            b"GET /v1/capabilities HTTP/1.1\r\nHost: localhost\r\nX-Big: "
            + b"a" * 1_000_000
            + b"\r\nConnection: close\r\n\r\n"
        )
        status = status_of(raw(server, request))
        assert status == 0 or 400 <= status < 500

    @pytest.mark.parametrize(
        "body",
        [b'{"prompt": "\xff\xfe\xfd"}', b"[" * 10_000 + b"]" * 10_000, b"{", b"null"],
        ids=["invalid-utf8", "deep-json", "truncated", "not-an-object"],
    )
    def test_malformed_bodies(self, server: ServeProcess, body: bytes) -> None:
        """Bodies that are not a TaskRequest get 400 INVALID_PARAMS, never a 500."""
        response = raw(server, post_raw("/v1/tasks", body))
        assert 400 == status_of(response), response[:300]
        assert b'"code":"INVALID_PARAMS"' in response

    @pytest.mark.parametrize(
        "path",
        [
            "/v1/tasks/..%2F..%2Fetc%2Fpasswd/stream",
            "/v1/tasks/%2e%2e/cancel",
            "/v1/sessions/..%5C..%5Cwindows",
            "/v1/artifacts/..%5C..%5Cetc%5Cpasswd",
            "/v1/pools/..%2F..%2Fetc/health",
            "/openapi/..%2F..%2Fetc%2Fpasswd.yaml",
        ],
    )
    def test_traversal_in_ids(self, server: ServeProcess, path: str) -> None:
        """Path-shaped ids are 400 or 404 with a typed envelope; nothing is read from disk."""
        method = "POST" if path.endswith("/cancel") else "GET"
        with httpx.Client(base_url=server.url, timeout=10) as client:
            response = client.request(method, path)
        assert response.status_code in (400, 404), response.text
        assert response.json()["code"] in ("INVALID_PARAMS", "NOT_FOUND")
        assert "root:" not in response.text

    @pytest.mark.parametrize(
        ("value", "status"),
        [
            # Control characters are refused by the HTTP parser before the app sees them.
            (b"abc\x0bSet-Cookie: pwn=1", 400),
            (b"id\x00null", 400),
            # Legal header bytes that are no safe id reach the app, which replaces them.
            (b"a" * 300, 200),
            (b"\xff\xfe", 200),
        ],
    )
    def test_header_injection_in_correlation_ids(
        self, server: ServeProcess, value: bytes, status: int
    ) -> None:
        """An unsafe correlation id is replaced by a fresh UUIDv4 and never echoed."""
        request = (
            b"GET /v1/capabilities HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"X-Correlation-Id: " + value + b"\r\n\r\n"
        )
        response = raw(server, request)
        head = response.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
        assert "set-cookie" not in head
        assert status == status_of(response)
        assert value not in response
        if status == 200:
            echoed = re.search(r"x-correlation-id: (\S+)", head)
            assert echoed is not None and UUID.match(echoed.group(1))
        else:
            assert 400 <= status_of(response) < 500

    def test_secrets_in_requests_stay_out_of_the_log(self, server: ServeProcess) -> None:
        """Right and forged bearer tokens, and a key in a prompt, are used but never logged."""
        with httpx.Client(base_url=server.url, timeout=10) as client:
            right = client.get("/v1/capabilities", headers={"Authorization": f"Bearer {TOKEN}"})
            forged = client.get("/v1/capabilities", headers={"Authorization": f"Bearer {FORGED}"})
            leaked = client.post(
                "/v1/tasks",
                json=task_body(prompt=f"my key is {FORGED}", max_tokens=1, model="m0"),
                headers={"X-Api-Key": FORGED},
            )
        assert (200, 401, 202) == (right.status_code, forged.status_code, leaked.status_code)
        assert FORGED not in json.dumps(forged.json())

    @pytest.mark.parametrize(
        "ref",
        [
            f"https://{URL_TOKEN}@models.example/m.gguf",
            f"https://user:{URL_TOKEN}@models.example/m.gguf",
            f"oci://{URL_TOKEN}@registry.example/m:1",
            f"https://user:pa@{URL_TOKEN}@models.example/m.gguf",
        ],
    )
    def test_credentials_in_a_model_url_are_never_echoed(
        self, server: ServeProcess, ref: str
    ) -> None:
        """A refused ref is quoted without what precedes the host, a bare token included."""
        with httpx.Client(base_url=server.url, timeout=10) as client:
            response = client.post("/v1/catalog/models", json={"ref": ref})
        assert (400, "INVALID_PARAMS") == (response.status_code, response.json()["code"])
        assert URL_TOKEN not in response.text
        assert "[REDACTED]@" in response.json()["message"]

    def test_still_serving(self, server: ServeProcess) -> None:
        """After all of the above, a task still streams to its end."""
        body = task_body(max_tokens=2)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert 202 == client.post("/v1/tasks", json=body).status_code
            stream = client.get(f"/v1/tasks/{body['task_id']}/stream")
        assert "event: end\n" in stream.text
