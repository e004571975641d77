"""``llorch``: serve, submit, cancel, pools, config and contracts commands.

Only this module (and ``bootstrap``) exits the process; everything else raises.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from llama_orch.cli import client as client_mod
from llama_orch.cli import pools as pools_mod
from llama_orch.cli.models import models as models_group
from llama_orch.cli.node import node as node_group
from llama_orch.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8080"


@click.group()
@click.version_option(package_name="llama-orch", prog_name="llorch")
def cli() -> None:
    """llama-orch: share one workstation's NVIDIA GPUs between many clients."""


@cli.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML config file.",
)
@click.option("--bind", default=None, help="host:port; overrides BIND_ADDR and the file.")
@click.option(
    "--log-format",
    type=click.Choice(["json", "pretty"]),
    default=None,
    help=(
        "json (JSON Lines) or pretty; overrides LOG_FORMAT and the file. Default: pretty at a "
        "terminal, JSON Lines otherwise."
    ),
)
def serve(config_path: str, bind: str | None, log_format: str | None) -> None:
    """Serve the data and control planes for CONFIG."""
    from llama_orch.cli.serve import run_server
    from llama_orch.server.listener import CannotBind

    try:
        run_server(config_path, os.environ, bind, log_format=log_format)
    except ConfigError as exc:
        click.echo(f"llorch: {exc}", err=True)
        sys.exit(2)
    except CannotBind as exc:
        click.echo(f"llorch: {exc}", err=True)
        sys.exit(1)


@cli.group()
def token() -> None:
    """Bearer tokens for AUTH_TOKEN and LLORCH_TOKEN."""


@token.command("new")
@click.option(
    "--file",
    "path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the token to this new file (mode 0600; a missing folder is made) "
    "instead of printing it.",
)
def token_new(path: str | None) -> None:
    """Mint a strong random token (256 bits, URL-safe)."""
    from llama_orch.auth.tokens import fingerprint, mint_token

    minted = mint_token()
    if path is None:
        click.echo(minted)
        return
    try:
        # The documented place (~/.config/llama-orch/) may not exist yet; the folder made to
        # hold the secret is private like the secret.
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        click.echo(f"llorch: cannot create {path}: {exc.strerror}", err=True)
        sys.exit(2)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(minted + "\n")
    click.echo(f"wrote a new token to {path} (identity token:{fingerprint(minted)})", err=True)


@cli.group()
def config() -> None:
    """Validate config files and print their schema."""


@config.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--offline",
    is_flag=True,
    help="Check the files only: skip what depends on this machine and environment "
    "(the bind address without a token, api_key_env variables, GPUs for real engines).",
)
def config_validate(files: tuple[str, ...], offline: bool) -> None:
    """Check config FILES as `llorch serve` would; exits 2 listing every problem with its key
    path."""
    from llama_orch.bootstrap import check_serveable, discover_gpus
    from llama_orch.config import load_settings, read_config_file

    failed = False
    for path in files:
        try:
            cfg = read_config_file(path)
            if not offline:
                settings = load_settings(os.environ, path)
                check_serveable(settings, discover_gpus(settings))
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            failed = True
        else:
            click.echo(f"{path}: ok ({len(cfg.pools)} pools)")
    if failed:
        sys.exit(2)


@config.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the config file."""
    from llama_orch.contracts.schema import config_schema_text

    click.echo(config_schema_text(), nl=False)


@cli.group()
def contracts() -> None:
    """Generated contract files."""


@contracts.command("write")
@click.option(
    "--root",
    default=".",
    type=click.Path(file_okay=False),
    help="Repository root holding contracts/.",
)
def contracts_write(root: str) -> None:
    """Regenerate contracts/config.schema.json and contracts/openapi/*.yaml (only if changed)."""
    from llama_orch.contracts.schema import write_contracts

    for path, changed in write_contracts(Path(root)):
        click.echo(f"{'wrote' if changed else 'unchanged'} {path}")


def client_token(token_file: str | None, environ: Mapping[str, str]) -> str | None:
    """The bearer token to send: --token-file, else LLORCH_TOKEN, else LLORCH_TOKEN_FILE."""
    from llama_orch.config import bearer_token_problem, read_token_file

    if token_file is None:
        inline = environ.get("LLORCH_TOKEN", "").strip()
        problem = bearer_token_problem(inline) if inline else None
        if problem:
            raise click.UsageError(f"LLORCH_TOKEN {problem}")
        if inline:
            return inline
        token_file = environ.get("LLORCH_TOKEN_FILE") or None
    if token_file is None:
        return None
    try:
        return read_token_file(token_file)
    except OSError as exc:
        raise click.UsageError(f"cannot read token file {token_file}: {exc.strerror}") from exc
    except ValueError as exc:
        raise click.UsageError(f"token file {token_file} {exc}") from exc


def _client(url: str | None, token_file: str | None) -> client_mod.OrchClient:
    token = client_token(token_file, os.environ)
    return client_mod.OrchClient(resolve_url(url, os.environ), token)


def resolve_url(url: str | None, environ: Mapping[str, str]) -> str:
    """--url, else LLORCH_URL, else the default; checked to be a server URL."""
    if url:
        return client_mod.server_url(url, "--url")
    if environ.get("LLORCH_URL"):
        return client_mod.server_url(environ["LLORCH_URL"], "LLORCH_URL")
    return DEFAULT_URL


_url_option = click.option(
    "--url", default=None, help=f"Server URL (env LLORCH_URL, default {DEFAULT_URL})."
)
_token_option = click.option(
    "--token-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="File holding the bearer token (else env LLORCH_TOKEN, else LLORCH_TOKEN_FILE).",
)


@cli.command()
@click.argument("prompt", type=client_mod.TEXT)
@click.option(
    "--pool", default=None, type=client_mod.TEXT, help="Pick the engine and model of this pool."
)
@click.option(
    "--engine", default=None, type=client_mod.TEXT, help="Engine (mock, llamacpp, vllm, ...)."
)
@click.option("--model", default=None, type=client_mod.TEXT, help="model_ref the pool serves.")
@click.option("--priority", type=click.Choice(["interactive", "batch"]), default="interactive")
@click.option("--seed", type=int, default=None)
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--ctx", type=int, default=None, help="Context to ask for (default: pool limit).")
@click.option("--deadline-ms", type=int, default=600_000, show_default=True)
@click.option(
    "--session", default=None, type=client_mod.TEXT, help="Session UUID (default: a new one)."
)
@_url_option
@_token_option
def submit(prompt: str, url: str | None, token_file: str | None, **options: Any) -> None:
    """Submit PROMPT, print its queue position, then stream its tokens."""
    with _client(url, token_file) as client:
        sys.exit(client_mod.submit_and_stream(client, prompt, options))


@cli.command()
@click.argument("task_id", type=client_mod.ID)
@_url_option
@_token_option
def cancel(task_id: str, url: str | None, token_file: str | None) -> None:
    """Cancel TASK_ID (idempotent)."""
    with _client(url, token_file) as client:
        sys.exit(client_mod.cancel(client, task_id))


@cli.command()
@click.option("--watch", is_flag=True, help="Refresh until interrupted.")
@click.option(
    "--interval",
    type=client_mod.Seconds(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes (at least 0.1).",
)
@_url_option
@_token_option
def status(watch: bool, interval: float, url: str | None, token_file: str | None) -> None:
    """Print the GPUs, pools, queue and running tasks (what the web console shows)."""
    from llama_orch.cli.status import show

    with _client(url, token_file) as client:
        try:
            sys.exit(show(client, watch=watch, interval_s=interval))
        except KeyboardInterrupt:
            sys.exit(0)


cli.add_command(models_group)
cli.add_command(node_group)


@cli.group()
def artifacts() -> None:
    """Stored artifacts and stream traces."""


@artifacts.command("get")
@click.argument("artifact_id", type=client_mod.ID)
@click.option("--transcript", is_flag=True, help="Print a trace's SSE transcript as streamed.")
@_url_option
@_token_option
def artifacts_get(
    artifact_id: str, transcript: bool, url: str | None, token_file: str | None
) -> None:
    """Print ARTIFACT_ID as JSON."""
    from llama_orch.cli import artifacts as artifacts_mod

    with _client(url, token_file) as client:
        sys.exit(artifacts_mod.get(client, artifact_id, transcript=transcript))


@artifacts.command("ls")
@click.option(
    "--tag",
    default=None,
    type=client_mod.TEXT,
    help="Only artifacts with this tag (e.g. task:<id>).",
)
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option(
    "--after", default=None, type=client_mod.TEXT, help="Start after this artifact id (paging)."
)
@click.option("--all", "every", is_flag=True, help="Follow every page.")
@_url_option
@_token_option
def artifacts_ls(
    tag: str | None,
    limit: int,
    after: str | None,
    every: bool,
    url: str | None,
    token_file: str | None,
) -> None:
    """List artifacts in creation order: id, kind, created_ms, tags."""
    from llama_orch.cli import artifacts as artifacts_mod

    with _client(url, token_file) as client:
        sys.exit(artifacts_mod.ls(client, tag, limit, after, every))


@cli.command()
@click.option(
    "--log",
    "log_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="The server's JSON log file; fail on error-level lines.",
)
@_url_option
@_token_option
def selftest(log_path: str | None, url: str | None, token_file: str | None) -> None:
    """Check a running server: pools Ready, a decode per pool, a cancel, metrics (and its log)."""
    from llama_orch.cli import selftest as selftest_mod

    with _client(url, token_file) as client:
        sys.exit(selftest_mod.selftest(client, Path(log_path) if log_path else None))


@cli.group(invoke_without_command=True)
@_url_option
@_token_option
@click.pass_context
def pools(ctx: click.Context, url: str | None, token_file: str | None) -> None:
    """Show the pools: replicas, state, engine@version, model, GPUs, VRAM, slots, queue."""
    ctx.obj = (url, token_file)
    if ctx.invoked_subcommand is None:
        with _client(url, token_file) as client:
            pools_mod.run(pools_mod.list_pools, client)


@pools.command("drain")
@click.argument("pool_id", type=client_mod.ID)
@click.option("--deadline-ms", type=int, default=30_000, show_default=True)
@_url_option
@_token_option
@click.pass_obj
def pools_drain(
    obj: tuple[str | None, str | None],
    pool_id: str,
    deadline_ms: int,
    url: str | None,
    token_file: str | None,
) -> None:
    """Drain POOL_ID: refuse new tasks, end queued ones, stop in-flight ones at the deadline."""
    with _client(url or obj[0], token_file or obj[1]) as client:
        path = f"/v1/pools/{client_mod.segment(pool_id)}/drain"
        pools_mod.run(pools_mod.post, client, path, {"deadline_ms": deadline_ms})


@pools.command("reload")
@click.argument("pool_id", type=client_mod.ID)
@click.argument("model_ref", type=client_mod.ID, required=False)
@_url_option
@_token_option
@click.pass_obj
def pools_reload(
    obj: tuple[str | None, str | None],
    pool_id: str,
    model_ref: str | None,
    url: str | None,
    token_file: str | None,
) -> None:
    """Reload POOL_ID with MODEL_REF (default: the model it serves, which restarts a launched
    engine and probes an external one again); `llorch pools` shows the outcome."""
    with _client(url or obj[0], token_file or obj[1]) as client:
        pools_mod.run(pools_mod.reload, client, pool_id, model_ref)


@pools.command("plan")
@click.argument("pool_id", type=client_mod.ID)
@click.option(
    "--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False)
)
def pools_plan(pool_id: str, config_path: str) -> None:
    """Print what preparing POOL_ID's engine would do (no side effects, no server needed)."""
    sys.exit(pools_mod.print_plan(config_path, pool_id))


def main() -> None:
    cli(prog_name="llorch")
