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


def _schedstat(pid: int) -> dict[str, int]:
    """Per thread of ``pid``: nanoseconds on a CPU plus nanoseconds waiting for one."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as stat:
                on_cpu, waiting, _ = stat.read().split()
        except OSError:  # the thread ended meanwhile
            continue
        times[tid] = int(on_cpu) + int(waiting)
    return times


def busiest_thread_runnable(pid: int, window_s: float) -> float:
    """Share of ``window_s`` during which the busiest thread of ``pid`` wanted a CPU.

    A thread that spins is runnable all the time, on a CPU or waiting for one: near 1.0 however
    loaded the machine is, where a share of CPU time would fall with the load. A thread that
    sleeps between events is runnable only for their handling. Linux schedstat (the kernel's
    sched_info accounting) gives both parts, per thread.
    """
    before, started = _schedstat(pid), time.monotonic()
    time.sleep(window_s)
    after, elapsed = _schedstat(pid), time.monotonic() - started
    busiest = max(after[tid] - before.get(tid, 0) for tid in after)
    return busiest / 1e9 / elapsed
