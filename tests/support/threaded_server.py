"""Run an ASGI app with uvicorn on an ephemeral loopback port in a background thread.

For tests of blocking clients (huggingface_hub, httpx.Client, boto3) that need a real server
while the test itself runs synchronously.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn


@contextlib.contextmanager
def serve_in_thread(
    app: Any, *, certfile: Path | None = None, keyfile: Path | None = None
) -> Iterator[int]:
    """Yield the port ``app`` listens on; stop the server when the block ends."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        # No log_config: uvicorn would reconfigure the process's logging for every later test.
        log_config=None,
        access_log=False,
        lifespan="off",
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(2000):
        if server.started or not thread.is_alive():
            break
        thread.join(0.01)
    assert server.started, "the test server did not start"
    port: int = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
