"""``llorch models``: pull, ls, show, verify, retire, rm.

Each command talks to the server at --url when one answers there; otherwise (or with --local)
it works directly on the catalog on disk, with the policies of --config when given. A pull
typed by hand is an explicit request, so without --config the direct mode may reach any host.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import click
import httpx

from llama_orch.cli.client import (
    EXIT_UNREACHABLE,
    ID,
    TEXT,
    NotOrchAnswer,
    UnreadableAnswer,
    http_client,
    next_page,
    quoted,
    reading,
    segment,
    shown_url,
)
from llama_orch.errors import ConfigError, OrchError
from llama_orch.observability.logging import printable

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def _fail(message: str, hint: str | None = None) -> None:
    click.echo(f"llorch: {message}" + (f" (hint: {hint})" if hint else ""), err=True)
    sys.exit(EXIT_ERROR)


def _fail_http(response: httpx.Response) -> None:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        _fail(f"HTTP {response.status_code} {printable(response.text[:200])}")
    message = f"{body.get('code')}: {body.get('message')}"
    _fail(
        f"HTTP {response.status_code} {quoted(message)}",
        quoted(str(body["hint"])) if body.get("hint") else None,
    )


class Target:
    """Where commands go: a live server (``http``), else the catalog on disk (``local``)."""

    def __init__(self, url: str, token: str | None, local: bool, config_path: str | None):
        self.config_path = config_path
        self._url, self._token, self._local = url, token, local

    def given_late(self, url: str | None = None, token: str | None = None) -> None:
        """--url or --token-file given after the subcommand: they win over the group's."""
        self._url = url or self._url
        self._token = token or self._token

    @functools.cached_property
    def http(self) -> httpx.Client | None:
        """The server's client, or None for the catalog on disk; asked for when a subcommand
        runs, so ``--help`` never probes the network."""
        if self._local:
            return None
        client = http_client(self._url, self._token, 10.0)
        try:
            client.get("/v1/catalog/models", params={"limit": 1})
        except httpx.TransportError:
            client.close()
            click.echo(
                f"llorch: no server at {shown_url(self._url)}; using the catalog on disk", err=True
            )
            return None
        return client

    def provisioner(self) -> Any:
        from llama_orch.config import Config, catalog_env, read_config_file
        from llama_orch.provisioners.factory import model_provisioner

        # The file alone: the catalog needs its root and policies, not what serving checks
        # (a token for a LAN bind, upstream API keys), so an operator's shell need not hold them.
        if self.config_path is not None:
            return model_provisioner(read_config_file(self.config_path), catalog_env(os.environ))
        config = Config.model_validate(
            {
                "network_policy": {
                    "allow_outbound": True,
                    "allowed_schemes": ["file", "http", "https", "hf", "s3", "oci"],
                },
                "pools": [{"id": "cli", "engine": "mock", "model": "cli"}],
            }
        )
        return model_provisioner(config, catalog_env(os.environ))


def _mib(count: float | None) -> str:
    return "?" if count is None else f"{count / 1048576:.1f}"


def render_progress(snapshot: Mapping[str, Any], width: int = 30) -> str:
    """One line: bar, MiB done/total, rate, ETA."""
    done, total = snapshot.get("bytes_done", 0), snapshot.get("bytes_total")
    filled = int(width * done / total) if total else 0
    bar = "#" * filled + "-" * (width - filled)
    eta = snapshot.get("eta_s")
    rate = snapshot.get("rate_bytes_per_s") or 0.0
    return (
        f"[{bar}] {_mib(done)}/{_mib(total)} MiB  {_mib(rate)} MiB/s  "
        f"ETA {'-' if eta is None else f'{eta:.0f}s'}"
    )


def _watch(read: Callable[[], Mapping[str, Any] | None], done: Callable[[], bool]) -> None:
    """Redraw the progress line until ``done()``; Ctrl-C leaves the pull resumable."""
    tty = sys.stderr.isatty()
    while not done():
        snapshot = read()
        if snapshot and tty:
            click.echo("\r" + render_progress(snapshot), nl=False, err=True)
        time.sleep(0.2)
    snapshot = read()
    if snapshot and snapshot.get("bytes_total") is not None:
        click.echo(("\r" if tty else "") + render_progress(snapshot), err=True)


def _entry_row(model: Mapping[str, Any]) -> tuple[str, ...]:
    gguf = model.get("gguf") or {}
    return (
        str(model["id"]),
        str(model.get("state", "")),
        _mib(model.get("size_bytes")),
        str(model.get("verification") or "-"),
        str(gguf.get("architecture") or "-"),
        str(gguf.get("file_type") or "-"),
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    """Cells hold text from model files' headers and the server: escaped, it can neither
    break the table nor drive the terminal."""
    header = ("ID", "STATE", "MIB", "VERIFIED", "ARCH", "QUANT")
    rows = [tuple(printable(cell) for cell in row) for row in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    )


def _wire(entry: Any) -> dict[str, Any]:
    from llama_orch.server.catalog_api import wire_model

    return wire_model(entry, None).model_dump(mode="json", exclude_none=True)


def _target(ctx: click.Context) -> Target:
    target: Target = ctx.obj
    return target


class _CatalogGroup(click.Group):
    """The on-disk catalog's errors (a --config that is not valid, an index that cannot be
    read, a root that cannot be written, a full disk) end the command with what failed, not
    a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # stdout closed by the reader (`| head`): click ends quietly, as elsewhere
        except NotOrchAnswer as exc:
            click.echo(f"llorch: {exc}", err=True)
            sys.exit(EXIT_UNREACHABLE)
        except UnreadableAnswer as exc:
            _fail(str(exc))
        except ConfigError as exc:
            click.echo(f"llorch: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        except OrchError as exc:
            _fail(exc.message, exc.hint)
        except OSError as exc:
            where = f" {exc.filename}:" if exc.filename else ""
            _fail(
                f"cannot use the catalog on disk:{where} {exc.strerror or exc}",
                "point catalog.root (--config) at a directory this user can write",
            )


@click.group(cls=_CatalogGroup)
@click.option("--url", default=None, help=f"Server URL (env LLORCH_URL, default {DEFAULT_URL}).")
@click.option(
    "--token-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="File holding the bearer token (else env LLORCH_TOKEN, else LLORCH_TOKEN_FILE).",
)
@click.option("--local", is_flag=True, help="Work on the catalog on disk even if a server runs.")
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Config file whose catalog root and policies the local mode uses.",
)
@click.pass_context
def models(
    ctx: click.Context,
    url: str | None,
    token_file: str | None,
    local: bool,
    config_path: str | None,
) -> None:
    """The model catalog: pull, ls, show, verify, retire, rm."""
    from llama_orch.cli.main import client_token, resolve_url
    from llama_orch.observability.logging import configure_logging
    from llama_orch.observability.redaction import Redactor

    # stdout carries only results; warnings (an unverified pull) go to stderr, secrets redacted.
    configure_logging(
        "pretty",
        "warning",
        redactor=Redactor((os.environ.get("HF_TOKEN", ""),)),
        stream=sys.stderr,
    )

    token = client_token(token_file, os.environ)
    ctx.obj = Target(resolve_url(url, os.environ), token, local, config_path)


def _late_url(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    from llama_orch.cli.main import resolve_url

    if value is not None:
        _target(ctx).given_late(url=resolve_url(value, os.environ))


def _late_token(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    from llama_orch.cli.main import client_token

    if value is not None:
        _target(ctx).given_late(token=client_token(value, os.environ))


def _server_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--url and --token-file after the subcommand as well (`llorch models ls --url X`)."""
    command = click.option(
        "--url", default=None, expose_value=False, callback=_late_url, help="As models --url."
    )(command)
    return click.option(
        "--token-file",
        default=None,
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=_late_token,
        help="As models --token-file.",
    )(command)


@models.command()
@click.argument("ref", type=TEXT)
@click.option("--digest", default=None, help="Expected sha256:<hex>; a mismatch fails the pull.")
@_server_options
@click.pass_context
def pull(ctx: click.Context, ref: str, digest: str | None) -> None:
    """Fetch REF (hf:, https://, s3://, oci://, file:) into the catalog, with progress."""
    target = _target(ctx)
    try:
        if target.http is not None:
            _pull_remote(target.http, ref, digest)
        else:
            _pull_local(target, ref, digest)
    except KeyboardInterrupt:
        click.echo("\nllorch: interrupted; nothing was registered, pull again to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OrchError as exc:
        _fail(exc.message, exc.hint)


def _pull_remote(http: httpx.Client, ref: str, digest: str | None) -> None:
    response = http.post("/v1/catalog/models", json={"ref": ref, "digest": digest})
    if response.status_code not in (201, 202):
        _fail_http(response)
    with reading(response):
        model_id = str(response.json()["id"])
    if response.status_code == 201:
        click.echo(model_id)
        return
    state: dict[str, Any] = {}

    def read() -> Mapping[str, Any] | None:
        got = http.get(f"/v1/catalog/models/{model_id}")
        with reading(got):
            state.update(got.json() if got.status_code == 200 else {})
        pull_state: Mapping[str, Any] | None = state.get("pull")
        return pull_state

    def finished() -> bool:
        read()
        return (state.get("pull") or {}).get("state") != "running"

    _watch(read, finished)
    error = (state.get("pull") or {}).get("error")
    if error:
        _fail(f"{error.get('code')}: {error.get('message')}", error.get("hint"))
    click.echo(model_id)


def _pull_local(target: Target, ref: str, digest: str | None) -> None:
    from llama_orch.catalog.refs import parse_ref, ref_id
    from llama_orch.catalog.verify import parse_digest

    provisioner = target.provisioner()
    parsed = parse_ref(ref, base_dir=os.getcwd())
    expected = parse_digest(digest) if digest else None
    provisioner.precheck(parsed)
    model_id = ref_id(parsed)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["entry"] = provisioner.ensure_present(parsed, expected)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()

    def read() -> Mapping[str, Any] | None:
        progress = provisioner.progress.get(model_id)
        return None if progress is None else progress.snapshot()

    _watch(read, lambda: not worker.is_alive())
    if "error" in outcome:
        raise outcome["error"]
    click.echo(outcome["entry"].id)


@models.command("ls")
@_server_options
@click.pass_context
def ls(ctx: click.Context) -> None:
    """List the catalog as a table."""
    target = _target(ctx)
    rows: list[tuple[str, ...]] = []
    if target.http is not None:
        params: dict[str, Any] = {"limit": 1000}
        seen: set[str] = set()
        while True:
            response = target.http.get("/v1/catalog/models", params=params)
            if response.status_code != 200:
                _fail_http(response)
            with reading(response):
                page = response.json()
                rows.extend(_entry_row(m) for m in page["models"])
                cursor = next_page(page.get("next_cursor"), seen)
            if cursor is None:
                break
            params["cursor"] = cursor
    else:
        rows = [_entry_row(_wire(e)) for e in target.provisioner().store.list()]
    click.echo(_table(rows))


def _one(ctx: click.Context, model_id: str, action: str) -> None:
    target = _target(ctx)
    if target.http is not None:
        http = target.http
        path = f"/v1/catalog/models/{segment(model_id)}"
        calls: dict[str, Callable[[], httpx.Response]] = {
            "show": lambda: http.get(path),
            "verify": lambda: http.post(f"{path}/verify"),
            "retire": lambda: http.post(f"{path}/state", json={"state": "Retired"}),
            "activate": lambda: http.post(f"{path}/state", json={"state": "Active"}),
            "rm": lambda: http.delete(path),
        }
        response = calls[action]()
        if response.status_code >= 400:
            _fail_http(response)
        if response.content:
            with reading(response):
                click.echo(json.dumps(response.json(), indent=2))
        return
    from llama_orch.catalog.entries import Lifecycle

    provisioner = target.provisioner()
    try:
        if action == "rm":
            outcome = provisioner.delete(model_id)
            if not outcome.found:
                _fail(f"model {model_id!r} is not in the catalog")
            if outcome.problem:
                click.echo(f"llorch: removed the entry; {outcome.problem}", err=True)
            return
        if action == "verify":
            entry = provisioner.verify(model_id)
        elif action in ("retire", "activate"):
            state = Lifecycle.RETIRED if action == "retire" else Lifecycle.ACTIVE
            entry = provisioner.set_state(model_id, state)
        else:
            entry = provisioner.store.get(model_id)
            if entry is None:
                _fail(f"model {model_id!r} is not in the catalog")
        click.echo(json.dumps(_wire(entry), indent=2))
    except OrchError as exc:
        _fail(exc.message, exc.hint)


@models.command()
@click.argument("model_id", type=ID)
@_server_options
@click.pass_context
def show(ctx: click.Context, model_id: str) -> None:
    """Print one model (with pull progress while it is pulled)."""
    _one(ctx, model_id, "show")


@models.command()
@click.argument("model_id", type=ID)
@_server_options
@click.pass_context
def verify(ctx: click.Context, model_id: str) -> None:
    """Re-hash MODEL_ID's bytes against its recorded digest."""
    _one(ctx, model_id, "verify")


@models.command()
@click.argument("model_id", type=ID)
@_server_options
@click.pass_context
def retire(ctx: click.Context, model_id: str) -> None:
    """Mark MODEL_ID Retired: tasks naming it get MODEL_DEPRECATED."""
    _one(ctx, model_id, "retire")


@models.command()
@click.argument("model_id", type=ID)
@_server_options
@click.pass_context
def activate(ctx: click.Context, model_id: str) -> None:
    """Mark MODEL_ID Active again."""
    _one(ctx, model_id, "activate")


@models.command()
@click.argument("model_id", type=ID)
@_server_options
@click.pass_context
def rm(ctx: click.Context, model_id: str) -> None:
    """Remove MODEL_ID from the catalog and delete the bytes the catalog owns."""
    _one(ctx, model_id, "rm")
