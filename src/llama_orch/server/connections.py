"""Watch the server's client connections: close silent ones, report the count and the cap.

The HTTP server (granian, on hyper) times out a request head only once its first byte came:
while it waits for the bytes that tell HTTP/1.1 from HTTP/2 it has no timer, so a client that
connects and sends nothing holds a descriptor for as long as it likes. This watch closes such
connections from inside the process. Every few seconds it looks at the process's own TCP
sockets (``/proc/self/fd``), and shuts down each connection to the server's port that has
received no byte for ``first_byte_timeout``: the kernel's ``TCP_INFO`` says how many bytes a
connection received and how long ago its last data (or, with none, its handshake) came.

It also counts the open client connections (``server_connections_open``) and says, once per
episode, when they reach the cap (``server.connections.max`` within the open-file limit), past
which new connections wait in the listen backlog. Linux only; elsewhere it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import sys
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from llama_orch.observability.narration import narrate

_PROC_FDS = "/proc/self/fd"
_TCP_INFO_LEN = 136
_TCP_LISTEN = 10
#: ``struct tcp_info`` offsets: tcpi_state (u8), tcpi_last_data_recv (u32, ms), and
#: tcpi_bytes_received (u64, Linux 4.1+).
_STATE_AT, _LAST_RECV_AT, _BYTES_RECEIVED_AT = 0, 52, 128


@dataclass(frozen=True)
class Scan:
    open: int
    closed_silent: int


def supported() -> bool:
    return sys.platform == "linux" and os.path.isdir(_PROC_FDS)


def scan_connections(port: int, first_byte_timeout_ms: int) -> Scan:
    """Count this process's client connections to ``port``; shut the long-silent ones."""
    open_, closed = 0, 0
    for name in os.listdir(_PROC_FDS):
        try:
            target = os.readlink(f"{_PROC_FDS}/{name}")
        except OSError:
            continue
        if not target.startswith("socket:["):
            continue
        # A duplicate, so that the connection stays the HTTP server's to close; the inode check
        # makes sure the descriptor was not reused between the readlink and the dup.
        try:
            fd = os.dup(int(name))
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # no longer a socket: the number was reused meanwhile
            os.close(fd)
            continue
        try:
            if os.fstat(fd).st_ino != int(target[8:-1]):
                continue
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if sock.type != socket.SOCK_STREAM or sock.getsockname()[1] != port:
                continue
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
            if len(info) < _BYTES_RECEIVED_AT + 8 or info[_STATE_AT] == _TCP_LISTEN:
                continue
            open_ += 1
            (received,) = struct.unpack_from("=Q", info, _BYTES_RECEIVED_AT)
            (silent_ms,) = struct.unpack_from("=I", info, _LAST_RECV_AT)
            if received == 0 and silent_ms >= first_byte_timeout_ms:
                sock.shutdown(socket.SHUT_RDWR)
                closed += 1
        except OSError:
            continue
        finally:
            sock.close()
    return Scan(open=open_ - closed, closed_silent=closed)


class ConnectionWatch:
    """Runs ``scan_connections`` in a thread every ``interval_s`` and reports what it saw."""

    def __init__(
        self,
        port: int,
        cap: int,
        first_byte_timeout_ms: int,
        *,
        open_gauge: Gauge,
        closed_silent: Counter,
        cap_reached: Counter,
    ) -> None:
        self.port = port
        self.cap = cap
        self.first_byte_timeout_ms = first_byte_timeout_ms
        # Fine enough that a silent connection lives at most 1.5 timeouts.
        self.interval_s = max(0.5, first_byte_timeout_ms / 2000)
        self._open = open_gauge
        self._closed_silent = closed_silent
        self._cap_reached = cap_reached
        self._at_cap = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if supported():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                scan = await asyncio.to_thread(
                    scan_connections, self.port, self.first_byte_timeout_ms
                )
            except OSError as exc:  # /proc unreadable, say with the fd table full: next time
                narrate(
                    "server",
                    "connection-scan",
                    f"port {self.port}",
                    f"Could not count connections this time: {exc.strerror or exc}.",
                    level="warning",
                )
                continue
            self.report(scan)

    def report(self, scan: Scan) -> None:
        self._open.set(scan.open)
        if scan.closed_silent:
            self._closed_silent.inc(scan.closed_silent)
            narrate(
                "server",
                "close-silent",
                f"port {self.port}",
                f"Closes {scan.closed_silent} connection(s) that sent nothing for "
                f"{self.first_byte_timeout_ms} ms.",
                closed=scan.closed_silent,
            )
        # The watch sees the count only at each scan; within a scan of the cap is close enough
        # to say new connections are waiting.
        at_cap = scan.open + scan.closed_silent >= self.cap
        if at_cap and not self._at_cap:
            self._cap_reached.inc()
            narrate(
                "server",
                "connection-cap",
                f"port {self.port}",
                f"Holds {self.cap} client connections, its cap; new connections wait in the "
                "listen backlog until some close (server.connections.max, ulimit -n).",
                level="warning",
                open=scan.open,
                cap=self.cap,
            )
        self._at_cap = at_cap
