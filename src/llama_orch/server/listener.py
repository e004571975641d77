"""The listening socket, and how many connections the open-file limit lets the server hold.

The socket is bound here, not by granian: granian binds with ``SO_REUSEPORT``, so a second
server on a busy port would start without a word and share it (a task admitted by one would be
unknown to the other). Here the port is shared only when ``server.reuse_port`` asks for it.
"""

from __future__ import annotations

import errno
import resource
import socket
from collections.abc import Iterable

from llama_orch.adapters._http import PROBE_CONNECTIONS
from llama_orch.config import PoolConfig
from llama_orch.vocab import Engine

#: File descriptors kept for what is not a client or engine connection: logs, model files, the
#: GPU sampler, the event loop's own.
_FD_RESERVE_BASE = 64


class CannotBind(Exception):
    """The configured address cannot be listened on; ``llorch serve`` exits with 1."""


class AddressInUse(CannotBind):
    """Another process listens on the configured address."""


def bind_listener(host: str, port: int, backlog: int, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on ``host:port``; raises ``AddressInUse`` when it is taken and
    ``CannotBind`` when it is not this machine's (or the name does not resolve)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR only lets a restart bind over connections still in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(
                f"address already in use: another process listens on {where}; stop it, pick "
                "another port with --bind, or set server.reuse_port: true to share the port "
                "on purpose"
            ) from None
        raise CannotBind(
            f"cannot listen on {where}: {exc.strerror or exc}; bind an address of this machine "
            "(e.g. 127.0.0.1:8080, or 0.0.0.0 with a token) with --bind or BIND_ADDR"
        ) from None
    return sock


def raise_fd_limit() -> int:
    """Lift the soft open-file limit to the hard one; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return soft


def engine_fds(pools: Iterable[PoolConfig]) -> int:
    """The most connections the adapters may hold to the engines at once."""
    return sum(
        pool.replicas * (pool.max_connections + PROBE_CONNECTIONS)
        for pool in pools
        if pool.engine is not Engine.MOCK
    )


def connection_cap(configured: int, fd_limit: int, engine_connections: int = 0) -> int:
    """Client connections to serve at once: the configured maximum, within the fd limit less
    what the engine connections and the process's own files may take.

    Beyond the cap, connections wait in the listen backlog instead of being accepted; the
    server never accepts into an exhausted descriptor table, where the accept loop of the
    HTTP server would retry at once, forever, burning a core.
    """
    reserve = _FD_RESERVE_BASE + engine_connections
    return max(1, min(configured, fd_limit - reserve))
