"""``llorch artifacts get|ls``: read stored artifacts and stream traces over HTTP."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
import httpx

from llama_orch.cli.client import (
    EXIT_ERROR,
    EXIT_OK,
    OrchClient,
    cannot_reach,
    fail,
    json_text,
    next_page,
    reading,
    segment,
)
from llama_orch.observability.logging import printable


def _guarded(client: OrchClient, call: Callable[[], int]) -> int:
    try:
        return call()
    except httpx.TransportError as exc:
        return cannot_reach(client, exc)


def get(client: OrchClient, artifact_id: str, *, transcript: bool) -> int:
    """Print the artifact as JSON, or with ``transcript`` a trace's SSE text as streamed."""

    def call() -> int:
        response = client.http.get(f"/v1/artifacts/{segment(artifact_id)}")
        if response.status_code != 200:
            return fail(response)
        with reading(response):
            body: dict[str, Any] = response.json()
            text = body.get("content", {}).get("transcript") if transcript else None
        if transcript:
            if not isinstance(text, str):
                click.echo(f"llorch: artifact {artifact_id} holds no transcript", err=True)
                return EXIT_ERROR
            sys.stdout.write(text)
            return EXIT_OK
        click.echo(json_text(body))
        return EXIT_OK

    return _guarded(client, call)


def ls(client: OrchClient, tag: str | None, limit: int, after: str | None, every: bool) -> int:
    """One line per artifact: id, kind, creation time in ms, tags; ``every`` follows pages."""

    def call() -> int:
        cursor = after
        seen: set[str] = set()
        while True:
            params: dict[str, Any] = {"limit": limit}
            if tag is not None:
                params["tag"] = tag
            if cursor is not None:
                params["after"] = cursor
            response = client.http.get("/v1/artifacts", params=params)
            if response.status_code != 200:
                return fail(response)
            with reading(response):
                page = response.json()
                for ref in page["items"]:
                    # Tags are any client's text: escaped, they cannot drive the terminal.
                    click.echo(
                        printable(
                            f"{ref['id']}  {ref['kind']:<7}  {ref['created_ms']}  "
                            f"{','.join(ref['tags'])}"
                        )
                    )
                cursor = next_page(page.get("next"), seen)
            if cursor is None:
                return EXIT_OK
            if not every:
                click.echo(f"more: --after {cursor}", err=True)
                return EXIT_OK

    return _guarded(client, call)
