"""``llorch pools``: the pools as a table (like ``ollama ps``), and drain, reload and plan."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import httpx

from llama_orch.cli import client as client_mod
from llama_orch.config import read_config_file
from llama_orch.errors import ConfigError
from llama_orch.observability.logging import printable
from llama_orch.provisioners.engine import ProvisionContext, ProvisionError, plan

COLUMNS = ("POOL", "REPLICAS", "STATE", "ENGINE", "MODEL", "GPU", "VRAM", "SLOTS", "QUEUE")


def _gib(value: Any) -> str:
    return f"{value / 2**30:.1f}" if isinstance(value, int | float) else "-"


def _state(health: dict[str, Any]) -> str:
    op = health.get("last_operation") or {}
    if op.get("state") == "running":
        return f"{op.get('kind')}ing"
    if health.get("draining"):
        return "draining"
    state = "ready" if health.get("ready") else "unready"
    return state + (" (simulated)" if health.get("simulated") else "")


def _gpus(pool: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The mask, prefixed with the hosts running the replicas when they are cluster hosts."""
    mask = ",".join(str(d) for d in metrics.get("device_mask", pool.get("device_mask", [])))
    hosts = sorted({r["host"] for r in pool.get("replicas", []) if r.get("host")})
    return f"{'+'.join(hosts)}:{mask or '-'}" if hosts else mask or "-"


def row(pool: dict[str, Any], health: dict[str, Any]) -> tuple[str, ...]:
    metrics = health.get("metrics", {})
    replicas = metrics.get("replicas", [])
    ready = sum(1 for r in replicas if r.get("state") == "ready")
    version = health.get("engine_version") or pool.get("engine_version") or "?"
    total, free = metrics.get("vram_total_bytes"), metrics.get("vram_free_bytes")
    vram = f"{_gib(total - free)}/{_gib(total)} GiB" if total and free is not None else "-"
    slots_total = health.get("slots_total") or 0
    busy = slots_total - (health.get("slots_free") or 0)
    return (
        str(pool["pool_id"]),
        f"{ready}/{len(replicas)}",
        _state(health),
        f"{pool['engine']}@{version}",
        str(health.get("model_id") or pool.get("model_id")),
        _gpus(pool, metrics),
        vram,
        f"{busy}/{slots_total}",
        str(metrics.get("queue_depth", 0)),
    )


def render(rows: list[tuple[str, ...]]) -> str:
    # Engines' own text (versions) is shown with its control characters escaped, and cut so
    # one enormous cell cannot widen every row.
    table = [COLUMNS, *([client_mod.quoted(cell, client_mod.CELL_MAX) for cell in r] for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
        for r in table
    )


def list_pools(client: client_mod.OrchClient) -> int:
    response = client.http.get("/v1/capabilities")
    if response.status_code != 200:
        return client_mod.fail(response)
    rows = []
    with client_mod.reading(response):
        pools = response.json().get("pools", [])
        ids = [pool["pool_id"] for pool in pools]
    for pool, pool_id in zip(pools, ids, strict=True):
        health = client.http.get(f"/v1/pools/{pool_id}/health")
        with client_mod.reading(health):
            rows.append(row(pool, health.json() if health.status_code == 200 else {}))
    click.echo(render(rows))
    return client_mod.EXIT_OK


def post(client: client_mod.OrchClient, path: str, body: dict[str, Any]) -> int:
    response = client.http.post(path, json=body)
    if response.status_code != 202:
        return client_mod.fail(response)
    with client_mod.reading(response):
        answer = response.json()
        detail = ", ".join(
            f"{k}={v}" for k, v in answer.items() if v is not None and k != "pool_id"
        )
        click.echo(printable(f"{answer.get('pool_id')}: {detail}"))
    return client_mod.EXIT_OK


def reload(client: client_mod.OrchClient, pool_id: str, model_ref: str | None) -> int:
    """Reload ``pool_id`` with ``model_ref``, or with the model its health says it serves."""
    segment = client_mod.segment(pool_id)
    if model_ref is None:
        health = client.http.get(f"/v1/pools/{segment}/health")
        if health.status_code != 200:
            return client_mod.fail(health)
        with client_mod.reading(health):
            served = health.json()["model_id"]
            if not isinstance(served, str):
                raise TypeError(f"model_id is {served!r}")
            model_ref = served
    return post(client, f"/v1/pools/{segment}/reload", {"new_model_ref": model_ref})


def print_plan(config_path: str, pool_id: str) -> int:
    try:
        config = read_config_file(config_path)
    except ConfigError as exc:
        click.echo(f"llorch: {exc}", err=True)
        return client_mod.EXIT_USAGE
    pool = next((p for p in config.pools if p.id == pool_id), None)
    if pool is None:
        known = ", ".join(p.id for p in config.pools)
        click.echo(f"llorch: no pool {pool_id!r} in {config_path} (pools: {known})", err=True)
        return client_mod.EXIT_USAGE
    if pool.provisioning is None:
        click.echo(f"pool {pool_id}: engine {pool.engine.value} runs in-process; nothing to plan")
        return client_mod.EXIT_OK
    try:
        ctx = ProvisionContext(
            cache_root=Path(config.engines.cache_dir).expanduser(),
            network_policy=config.network_policy,
        )
        click.echo(plan(pool, ctx).render())
    except ProvisionError as exc:
        click.echo(f"llorch: {exc}", err=True)
        return client_mod.EXIT_ERROR
    return client_mod.EXIT_OK


def run(call: Any, client: client_mod.OrchClient, *args: Any) -> None:
    try:
        code = call(client, *args)
    except httpx.TransportError as exc:
        code = client_mod.cannot_reach(client, exc)
    sys.exit(code)
