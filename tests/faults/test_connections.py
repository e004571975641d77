"""Connection-level faults against ``llorch serve``: silent and slow clients, the fd limit, a
second server on a busy port."""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.faults._raw import (
    address,
    busiest_thread_runnable,
    connect,
    read_until_closed,
    serve_config,
    status_of,
)
from tests.support.serve_process import serve_process

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the watch reads /proc (Linux)")


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


class TestSilentAndSlowClients:
    def test_a_connection_that_sends_nothing_is_closed(self, tmp_path: Path) -> None:
        config = serve_config(connections={"first_byte_timeout_ms": 1000})
        with serve_process(config, tmp_path) as server:
            with connect(server.url) as silent:
                # The socket's own timeout (30 s) fails the test if the server never closes.
                assert b"" == read_until_closed(silent)
            assert _metric(server.url, "server_connections_closed_silent_total") >= 1

    @pytest.mark.parametrize("framing", ["content-length", "chunked"])
    def test_a_body_that_stops_arriving_is_answered_408(self, tmp_path: Path, framing: str) -> None:
        config = serve_config(connections={"body_timeout_ms": 1000})
        length = (
            b"Content-Length: 100\r\n"
            if framing == "content-length"
            else b"Transfer-Encoding: chunked\r\n"
        )
        first = b'{"a' if framing == "content-length" else b'3\r\n{"a\r\n'
        with serve_process(config, tmp_path) as server, connect(server.url) as slow:
            slow.sendall(
                b"POST /v1/tasks HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\n" + length + b"\r\n" + first
            )
            response = read_until_closed(slow)
        assert 408 == status_of(response)
        assert b'"code":"INVALID_PARAMS"' in response
        assert b"did not arrive within 1 s" in response

    def test_a_body_dripped_a_byte_at_a_time_is_answered_408(self, tmp_path: Path) -> None:
        """Each byte arriving in time does not extend the body's deadline (slowloris)."""
        config = serve_config(connections={"body_timeout_ms": 1000})
        with serve_process(config, tmp_path) as server, connect(server.url) as slow:
            slow.sendall(
                b"POST /v1/tasks HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )
            for _ in range(300):
                slow.sendall(b" ")
                answered, _, _ = select.select([slow], [], [], 0.2)
                if answered:
                    break
            response = read_until_closed(slow)
        assert 408 == status_of(response)


class TestFdLimit:
    def test_the_server_answers_and_idles_with_its_fd_table_full_of_silent_sockets(
        self, tmp_path: Path
    ) -> None:
        """Under ``ulimit -n 256`` 300 silent sockets neither starve the server nor spin it."""

        def low_fd_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

        config = serve_config(connections={"first_byte_timeout_ms": 2000})
        with (
            serve_process(config, tmp_path, preexec_fn=low_fd_limit) as server,
            contextlib.ExitStack() as stack,
        ):
            for _ in range(300):
                stack.enter_context(connect(server.url))
            # Before the cap, the accept loop failed with EMFILE and retried at once, forever:
            # a thread always runnable, however little CPU a loaded machine gave it.
            assert busiest_thread_runnable(server.process.pid, 1.5) < 0.5
            assert 200 == httpx.get(f"{server.url}/v1/capabilities", timeout=30).status_code
            assert 192 == _metric(server.url, "server_connections_max")
            assert _metric(server.url, "server_connection_cap_reached_total") >= 1
        log = server.log_path.read_text()
        assert '"action":"connection-cap"' in log
        assert '"action":"close-silent"' in log


def _second_server(config: dict[str, object], workdir: Path, url: str) -> tuple[int, str]:
    """Run ``llorch serve`` on ``url``'s port; its exit status and stderr."""
    path = workdir / "second.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    host, port = address(url)
    command = [sys.executable, "-m", "llama_orch", "serve", "--config", str(path)]
    command += ["--bind", f"{host}:{port}"]
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    return done.returncode, done.stderr.decode()


class TestPortInUse:
    def test_a_second_server_on_a_busy_port_refuses_to_start(self, tmp_path: Path) -> None:
        config = serve_config()
        with serve_process(config, tmp_path) as first:
            code, stderr = _second_server(config, tmp_path, first.url)
            assert 1 == code
            assert "address already in use" in stderr
            assert 200 == httpx.get(f"{first.url}/v1/capabilities", timeout=30).status_code

    def test_reuse_port_is_refused_too_when_the_owner_did_not_ask_for_it(
        self, tmp_path: Path
    ) -> None:
        with socket.socket() as owner:
            owner.bind(("127.0.0.1", 0))
            owner.listen()
            url = f"http://127.0.0.1:{owner.getsockname()[1]}"
            code, stderr = _second_server(serve_config(reuse_port=True), tmp_path, url)
        assert (1, True) == (code, "address already in use" in stderr)
