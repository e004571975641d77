"""``llorch selftest``: check a running server end to end, the way a client would use it.

Checks, in order: every configured pool is Ready (preload), a minimal decode on each Ready pool,
a cancel, a metrics scrape, and (with ``--log``) the server's log has no error-level line.
Each check prints ``ok`` or ``FAIL`` with its reason; any failure exits 1.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
from httpx_sse import connect_sse

from llama_orch.cli.client import (
    EXIT_ERROR,
    EXIT_OK,
    STREAM_TIMEOUT,
    OrchClient,
    cannot_reach,
    reading,
)

#: Metric families a healthy server always exposes.
REQUIRED_METRICS = ("tasks_enqueued_total", "queue_depth", "tokens_out_total")


class CheckFailed(Exception):
    pass


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)

    def run(self, name: str, check: Callable[[], str]) -> None:
        try:
            detail = check()
        except CheckFailed as exc:
            self.failures.append(f"{name}: {exc}")
            click.echo(f"FAIL  {name}: {exc}")
        else:
            click.echo(f"ok    {name}: {detail}")


def _task(pool: dict[str, Any], max_tokens: int, pinned: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "session_id": str(uuid.uuid4()),
        "workload": "completion",
        "model_ref": pool["model_id"],
        "engine": pool["engine"],
        "ctx": min(512, pool.get("ctx_max") or 512),
        "priority": "interactive",
        "max_tokens": max_tokens,
        "deadline_ms": 60_000,
        "prompt": "llorch selftest",
        "seed": 1,
    }
    if pinned:
        body["placement"] = {"mode": "pin", "pin_pool_id": pool["pool_id"]}
    return body


def _admit(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.post("/v1/tasks", json=body)
    if response.status_code != 202:
        raise CheckFailed(f"admission answered {response.status_code}: {response.text[:200]}")


def _frames(http: httpx.Client, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    frames = []
    stream = f"/v1/tasks/{task_id}/stream"
    with connect_sse(http, "GET", stream, timeout=STREAM_TIMEOUT) as source:
        if source.response.status_code != 200:
            raise CheckFailed(f"stream answered {source.response.status_code}")
        for sse in source.iter_sse():
            with reading(source.response):
                frames.append((sse.event, json.loads(sse.data)))
    return frames


def _decode(http: httpx.Client, pool: dict[str, Any], pinned: bool) -> str:
    body = _task(pool, 2, pinned)
    _admit(http, body)
    frames = _frames(http, body["task_id"])
    events = [event for event, _ in frames]
    if not frames or events[0] != "started" or events[-1] != "end":
        last = frames[-1][1] if frames else {}
        raise CheckFailed(f"stream ended with {events[-1:]} {last.get('message', '')}".strip())
    tokens = sum(1 for event in events if event == "token")
    if tokens == 0:
        raise CheckFailed("no token was streamed")
    return f"{tokens} tokens, engine {pool.get('engine_version')}"


def _cancel(http: httpx.Client, pool: dict[str, Any], pinned: bool) -> str:
    body = _task(pool, 256, pinned)
    _admit(http, body)
    response = http.post(f"/v1/tasks/{body['task_id']}/cancel")
    if response.status_code != 204:
        raise CheckFailed(f"cancel answered {response.status_code}")
    end = _frames(http, body["task_id"])[-1]
    if end[0] != "end" or not end[1].get("canceled"):
        raise CheckFailed(f"a canceled task ended with {end[0]} {end[1]}")
    return f"task on {pool['pool_id']} canceled after {end[1].get('tokens_out')} tokens"


def _metrics(http: httpx.Client) -> str:
    from prometheus_client.parser import text_string_to_metric_families

    response = http.get("/metrics")
    if response.status_code != 200:
        raise CheckFailed(f"/metrics answered {response.status_code}")
    try:
        names = {family.name for family in text_string_to_metric_families(response.text)}
    except ValueError as exc:
        raise CheckFailed(f"the scrape does not parse: {exc}") from None
    missing = [n for n in REQUIRED_METRICS if n.removesuffix("_total") not in names]
    if missing:
        raise CheckFailed(f"missing metric families: {', '.join(missing)}")
    return f"{len(names)} metric families"


def _log(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise CheckFailed(f"cannot read {path}: {exc.strerror}") from None
    errors = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("level") in ("error", "critical"):
            errors.append(str(event.get("human") or event.get("event")))
    if errors:
        raise CheckFailed(f"{len(errors)} error lines, first: {errors[0][:160]}")
    return f"{len(lines)} lines, no errors"


def selftest(client: OrchClient, log: Path | None) -> int:
    http = client.http
    report = Report()
    try:
        caps = http.get("/v1/capabilities")
    except httpx.TransportError as exc:
        return cannot_reach(client, exc)
    if caps.status_code != 200:
        click.echo(f"FAIL  capabilities: HTTP {caps.status_code} {caps.text[:200]}")
        return EXIT_ERROR
    with reading(caps):
        pools = caps.json().get("pools", [])
        pinned = bool(
            caps.json().get("engines")
            and caps.json()["engines"][0]["features"].get("placement_overrides")
        )
        ready = [p for p in pools if p["ready"]]

    def preload() -> str:
        if not pools:
            raise CheckFailed("no pool is configured")
        unready = [p["pool_id"] for p in pools if not p["ready"]]
        if unready:
            raise CheckFailed(f"not Ready: {', '.join(unready)} (see /v1/pools/<id>/health)")
        return f"{len(pools)} pools Ready"

    report.run("preload", preload)
    for pool in ready:
        report.run(f"decode {pool['pool_id']}", functools.partial(_decode, http, pool, pinned))
    if ready:
        report.run("cancel", lambda: _cancel(http, ready[0], pinned))
    report.run("metrics", lambda: _metrics(http))
    if log is not None:
        report.run("log", lambda: _log(log))
    if report.failures:
        click.echo(f"selftest failed: {len(report.failures)} of the checks", err=True)
        return EXIT_ERROR
    return EXIT_OK
