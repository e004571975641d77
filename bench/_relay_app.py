"""Minimal relays for ``bench/relay.py``: the engine's SSE body passed through unchanged, so the
server binding and the upstream client's own cost per token can be read apart from the app's.

``RELAY_UPSTREAM`` is the engine's URL; ``RELAY_CLIENT`` picks how the engine is read:
``aiohttp`` (``ClientResponse.content.iter_any()``) or ``product`` (llama-orch's own upstream
client, ``adapters._clients.build_upstream``, whichever transport it uses for plain HTTP).
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import orjson

from llama_orch.adapters._clients import UpstreamClients, build_upstream
from llama_orch.config import HttpConfig

UPSTREAM = os.environ.get("RELAY_UPSTREAM", "http://127.0.0.1:1")
CLIENT = os.environ.get("RELAY_CLIENT", "aiohttp")
KEY = os.environ.get("RELAY_KEY", "")
_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_REQUEST_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}
_session: aiohttp.ClientSession | None = None
_upstream: UpstreamClients | None = None


def _body(scope: dict[str, Any]) -> bytes:
    fields = dict(
        part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part
    )
    return orjson.dumps(
        {
            "model": fields.get("model", "paced"),
            "messages": [{"role": "user", "content": "bench"}],
            "max_tokens": int(fields.get("n", "128")),
            "seed": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            if _upstream is not None:
                await _upstream.aclose()
            if _session is not None:
                await _session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session, _upstream
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    auth = {"authorization": f"Bearer {KEY}"}
    if CLIENT == "product":
        if _upstream is None:
            _upstream = build_upstream(
                HttpConfig(), base_url=UPSTREAM, max_connections=256, headers=auth
            )
        response = await _upstream.open_stream(
            "/v1/chat/completions", _body(scope), _REQUEST_HEADERS
        )
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            async for chunk in response.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await response.close()
    else:
        if _session is None:
            _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=auth)
        async with _session.post(
            f"{UPSTREAM}/v1/chat/completions", data=_body(scope), headers=_REQUEST_HEADERS
        ) as answer:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            async for chunk in answer.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
