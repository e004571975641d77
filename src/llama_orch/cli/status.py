"""``llorch status``: the console's front view as plain-text tables, from ``GET /v1/status``."""

from __future__ import annotations

import time
from collections.abc import Sequence

import click
import httpx

from llama_orch.cli.client import (
    CELL_MAX,
    EXIT_OK,
    OrchClient,
    cannot_reach,
    fail,
    quoted,
    reading,
)
from llama_orch.contracts.console import GpuStatus, Status

MIB = 2**20
#: What ``predicted_start_ms`` says when no Ready slot will ever start the task.
NEVER_MS = 2**31 - 1


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A titled table with columns padded to their widest cell; a note when empty.

    Cells hold engines' own text (versions, errors): control characters in it are shown
    escaped, so it can neither break the table nor drive the terminal, and a cell is cut at
    ``CELL_MAX`` characters, so one enormous id or error cannot widen every row."""
    if not rows:
        return f"{title}\n  (none)"
    cells = [[quoted(str(c), CELL_MAX) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    ]
    return "\n".join([title, *(line.rstrip() for line in lines)])


def _ms(value: int) -> str:
    if value >= NEVER_MS:
        return "never"
    return f"{value} ms" if value < 1000 else f"{value / 1000:.1f} s"


def _vram(gpu: GpuStatus) -> str:
    # A declared (simulated) GPU has a size but no reading of its use.
    used = "-" if gpu.simulated else str(gpu.vram_used_bytes // MIB)
    return f"{used}/{gpu.vram_total_bytes // MIB} MiB"


def render(status: Status) -> str:
    gpus = table(
        "GPUs",
        ["#", "NAME", "VRAM USED/TOTAL", "UTIL", "TEMP", "REPLICAS"],
        [
            [
                g.index,
                g.name + (" [simulated]" if g.simulated else ""),
                _vram(g),
                "-" if g.utilization_pct is None else f"{g.utilization_pct:.0f}%",
                "-" if g.temperature_c is None else f"{g.temperature_c:.0f}C",
                ", ".join(g.replicas) or "-",
            ]
            for g in status.gpu.gpus
        ],
    )
    pools = table(
        "Pools",
        ["POOL", "STATE", "ENGINE", "MODEL", "SLOTS", "QUEUED I/B", "TOK/S", "LAST ERROR"],
        [
            [
                p.pool_id,
                p.state,
                f"{p.engine.value}@{p.engine_version or 'unknown'}",
                p.model,
                f"{p.slots_busy}/{p.slots_total}",
                "/".join(str(n) for n in p.queue_depth.values()),
                f"{p.tokens_per_s:.1f}",
                p.last_error or "",
            ]
            for p in status.pool.pools
        ],
    )
    queued = table(
        "Queue",
        ["POOL", "POS", "TASK", "PRIORITY", "PREDICTED START", "ON TIME", "WAITED"],
        [
            [
                t.pool_id,
                t.position,
                t.task_id,
                t.priority.value,
                _ms(t.predicted_start_ms),
                f"{t.on_time_probability:.0%}",
                _ms(t.waited_ms),
            ]
            for q in status.queue.queues
            for t in q.tasks
        ],
    )
    hidden = sum(q.depth - len(q.tasks) for q in status.queue.queues)
    if hidden > 0:
        queued += f"\n  ... and {hidden} more"
    running = table(
        "Running",
        ["TASK", "POOL/REPLICA", "PRIORITY", "TOKENS", "TOK/S", "RUNNING"],
        [
            [
                t.task_id,
                f"{t.pool_id}/{t.replica_id}",
                t.priority.value,
                t.tokens_out,
                f"{t.tokens_per_s:.1f}",
                _ms(t.running_ms),
            ]
            for t in status.task.running
        ],
    )
    return "\n\n".join([gpus, pools, queued, running]) + "\n"


def fetch(client: OrchClient) -> Status | int:
    """The server's status, or the exit code to leave with."""
    try:
        response = client.http.get("/v1/status")
    except httpx.TransportError as exc:
        return cannot_reach(client, exc, "; is `make run` up?")
    if response.status_code != 200:
        return fail(response)
    with reading(response):
        return Status.model_validate_json(response.content)


def show(client: OrchClient, *, watch: bool, interval_s: float) -> int:
    while True:
        status = fetch(client)
        if isinstance(status, int):
            return status
        if watch:
            click.clear()
            click.echo(f"{client.url}  (every {interval_s:g} s; Ctrl-C to stop)\n")
        click.echo(render(status), nl=False)
        if not watch:
            return EXIT_OK
        try:
            time.sleep(interval_s)
        except KeyboardInterrupt:
            return EXIT_OK
