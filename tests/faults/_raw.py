"""Raw-socket clients and a serve config for the fault suite."""

from __future__ import annotations

import os
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from tests.support.server import SIMULATED_GPUS, mock_pool


def serve_config(pool: dict[str, Any] | None = None, **server: Any) -> dict[str, Any]:
    """A one-pool mock config (``pool``, or the default mock pool) with ``server`` keys."""
    return {"gpus": SIMULATED_GPUS, "pools": [pool or mock_pool()], "server": server}


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def connect(url: str, timeout_s: float = 30.0) -> socket.socket:
    sock = socket.create_connection(address(url), timeout=timeout_s)
    sock.settimeout(timeout_s)
    return sock


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes (the socket's timeout bounds the wait)."""
    data = bytearray()
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP/1.1 response."""
    line = response.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1.1 "), response[:200]
    return int(line.split()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used, from /proc (not the wall clock)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, window_s: float) -> float:
    """Share of one core the process used over a window of ``window_s`` wall seconds."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(window_s)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started)
