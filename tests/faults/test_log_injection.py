"""A client cannot forge log lines or send escape sequences to the operator's terminal.

The request path is logged (the access line, auth refusals) and percent-decoding lets a
client put any character in it: newlines, carriage returns, ANSI escapes (ESC ``[``), C1
controls, bidirectional overrides. Both the pretty log, which a person reads in a terminal, and
JSON Lines (read with ``jq -r`` or tailed) must show them escaped.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults._raw import connect, read_until_closed, serve_config, status_of
from tests.support.serve_process import ServeProcess, serve_process

TOKEN = "log-injection-token-5e1f0a9b7c"
#: Percent-encoded: a newline and a forged pretty line, a carriage return, an ANSI clear-screen
#: and colour, and the C1 control CSI (U+009B, UTF-8 ``c2 9b``).
FORGED = (
    "/v1/x%0A04:00:00%20[info%20%20%20%20%20]%20FORGED%20line.%20[server]"
    "%0D%1B[2J%1B[31mRED%C2%9B31mC1"
)
#: A pretty line starts with the time of day and the padded level.
_PRETTY_LINE = re.compile(r"^\d\d:\d\d:\d\d \[(debug|info|warning|error|critical) *\] ")
#: C0 controls but tab, DEL and C1 controls: none may reach the log.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _server_logging(factory: pytest.TempPathFactory, fmt: str) -> Iterator[ServeProcess]:
    workdir = factory.mktemp(f"log-injection-{fmt}")
    (workdir / "token").write_text(TOKEN)
    environ = {"AUTH_TOKEN_FILE": str(workdir / "token"), "LOG_FORMAT": fmt}
    with serve_process(serve_config(), workdir, environ=environ) as s:
        yield s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    yield from _server_logging(tmp_path_factory, "pretty")


def send(url: str, path: str, *, token: str | None) -> int:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    with connect(url, timeout_s=10) as sock:
        sock.sendall(request.encode("ascii"))
        return status_of(read_until_closed(sock))


def log_lines_through(path: Path, last: str, timeout_s: float = 10.0) -> list[str]:
    """The log's complete lines once one holds ``last`` (the access line follows the answer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = path.read_text(encoding="utf-8").split("\n")[:-1]
        if any(last in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


class TestPrettyLog:
    def test_a_path_cannot_forge_a_line_or_reach_the_terminal(self, server: ServeProcess) -> None:
        """Refused (no token) and served (404) requests both log the path; every control
        character in it is shown escaped, so each request stays on its own line."""
        assert 401 == send(server.url, FORGED, token=None)
        assert 404 == send(server.url, FORGED, token=TOKEN)
        assert 200 == send(server.url, "/v1/capabilities", token=TOKEN)  # logged after both
        last = "Answers GET /v1/capabilities with 200"
        lines = log_lines_through(server.log_path, last)
        assert any(last in line for line in lines)
        for line in lines:
            assert _PRETTY_LINE.match(line), f"a line that is not the server's own: {line!r}"
            assert not _CONTROL.search(line), f"a control character reached the log: {line!r}"
        mentions = [line for line in lines if "FORGED" in line]
        # Refusal and access line of the first request; access line of the second.
        assert len(mentions) >= 3
        for line in mentions:
            assert "GET /v1/x\\n04:00:00 [info     ] FORGED line. [server]\\r\\x1b[2J" in line


#: Percent-encoded: a right-to-left override (U+202E) that would show the path's tail reversed,
#: a left-to-right isolate and its pop (U+2066, U+2069), the Arabic letter mark (U+061C), a
#: right-to-left mark (U+200F), a line separator (U+2028) and the C1 controls NEL and CSI.
BIDI = "/v1/x%E2%80%AEtxt.exe%E2%81%A6iso%E2%81%A9%D8%9C%E2%80%8F%E2%80%A8%C2%85%C2%9B31m"
BIDI_DECODED = "/v1/x\u202etxt.exe\u2066iso\u2069\u061c\u200f\u2028\x85\x9b31m"
#: What a JSON line may not hold raw: C1 controls and the bidirectional and separator marks.
_UNSAFE = re.compile("[\x80-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    yield from _server_logging(tmp_path_factory, "json")


class TestJsonLog:
    def test_bidi_and_c1_characters_are_escaped_and_decode_back(
        self, json_server: ServeProcess
    ) -> None:
        """``jq -r`` or a terminal tailing the JSON log shows what the line holds raw: a path
        carrying U+202E would reorder what the operator reads. Each such character is written
        as its ``\\uXXXX`` escape, and the line still decodes to the path the client sent."""
        assert 401 == send(json_server.url, BIDI, token=None)
        assert 404 == send(json_server.url, BIDI, token=TOKEN)
        assert 200 == send(json_server.url, "/v1/capabilities", token=TOKEN)
        last = "Answers GET /v1/capabilities with 200"
        lines = log_lines_through(json_server.log_path, last)
        assert any(last in line for line in lines)
        for line in lines:
            assert not _UNSAFE.search(line), f"a raw control or bidi mark in the log: {line!r}"
            assert not _CONTROL.search(line), f"a control character reached the log: {line!r}"
        mentions = [json.loads(line) for line in lines if "txt.exe" in line]
        assert len(mentions) >= 3  # refusal and access line of the first, access of the second
        for record in mentions:
            assert any(BIDI_DECODED in str(value) for value in record.values()), record
        raw = next(line for line in lines if "txt.exe" in line)
        assert "\\u202etxt.exe\\u2066iso\\u2069\\u061c\\u200f\\u2028\\u0085\\u009b31m" in raw
