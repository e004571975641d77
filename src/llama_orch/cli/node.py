"""``llorch node head`` and ``llorch node join``: a GPU host becomes part of the cluster.

Both wrap ``ray start`` with what llama-orch places on: the host's name and one resource per GPU,
fixed ports (one firewall rule covers them), a small object store, no dashboard, and Ray's token
authentication with the shared token file. ``join`` first refuses a host whose Ray or Python
version differs from the head's, naming both.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import click

EXIT_ERROR = 1


def _fail(message: str) -> None:
    click.echo(f"llorch: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _token_file(path: str) -> str:
    from llama_orch.config import check_cluster_token

    token = Path(path).expanduser()
    try:
        check_cluster_token(token)
    except ValueError as exc:
        _fail(str(exc))
    return str(token.resolve())


def _name_problem(name: str) -> str | None:
    from llama_orch.config import HOST_NAME_MAX, HOST_NAME_PATTERN

    if len(name) <= HOST_NAME_MAX and re.fullmatch(HOST_NAME_PATTERN, name):
        return None
    return (
        f"{name!r} cannot be a pool's `host:`: use letters, digits, '-' and '_' (at most "
        f"{HOST_NAME_MAX}, starting with a letter or digit)"
    )


def default_host_name(nodename: str) -> str | None:
    """The host's short name (``ws2`` for ``ws2.lan``), as a config can name it; None when
    even that is no valid host name."""
    short = nodename.split(".", 1)[0]
    return None if _name_problem(short) else short


def _host_name(name: str | None) -> str:
    if name is not None:
        return name
    found = default_host_name(os.uname().nodename)
    if found is None:
        _fail(f"this host's name {os.uname().nodename!r} cannot be a pool's `host:`; pass --name")
    assert found is not None
    return found


def _checked_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    problem = None if value is None else _name_problem(value)
    if problem:
        raise click.BadParameter(problem)
    return value


def _gpu_count(gpus: int | None) -> int:
    if gpus is not None:
        return gpus
    from llama_orch.pool.gpus import nvml_inventory

    inventory = nvml_inventory()
    if not inventory.gpus:
        _fail(
            f"no NVIDIA GPU found here ({inventory.problem}); a host without GPUs cannot run "
            "engines (pass --gpus N only for a simulated host)"
        )
    return len(inventory.gpus)


def _ray_bin() -> str:
    found = shutil.which(
        "ray", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if found is None:
        _fail("ray is not installed; install the cluster extra: `uv sync --extra cluster`")
    assert found is not None
    return found


def _start(argv: list[str], token_file: str, dry_run: bool) -> None:
    from llama_orch.pool.launch.ray import auth_env

    env = auth_env(token_file)
    if dry_run:
        shown = " ".join(f"{k}={v}" for k, v in env.items())
        click.echo(f"{shown} {' '.join(argv)}")
        return
    os.execve(argv[0], argv, {**os.environ, **env})


@click.group()
def node() -> None:
    """Cluster hosts: start the head, join a GPU host to it (docs/cluster.md)."""


_name = click.option(
    "--name",
    default=None,
    callback=_checked_name,
    help="Host name pools use in `host:` (default: the short hostname).",
)
_gpus = click.option(
    "--gpus",
    type=click.IntRange(min=0),
    default=None,
    help="GPUs to offer (default: NVML's count).",
)
_token = click.option(
    "--token-file",
    required=True,
    type=click.Path(dir_okay=False),
    help="The cluster token (mode 0600).",
)
_dry = click.option(
    "--dry-run", is_flag=True, help="Print the `ray start` command instead of running it."
)


@node.command("head")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=6379,
    show_default=True,
    help="The head's Ray port (GCS).",
)
@click.option("--no-gpus", is_flag=True, help="The head only runs the server, no engines.")
@_name
@_gpus
@_token
@_dry
def node_head(
    port: int, no_gpus: bool, name: str | None, gpus: int | None, token_file: str, dry_run: bool
) -> None:
    """Start the cluster head on this machine (where `llorch serve` runs)."""
    from llama_orch.pool.launch.ray import start_argv

    token = _token_file(token_file)
    host = None if no_gpus else _host_name(name)
    count = 0 if no_gpus else _gpu_count(gpus)
    _start(start_argv(_ray_bin(), host=host, gpus=count, port=port), token, dry_run)


def _host_port(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from llama_orch.config import parse_host_port

    try:
        parse_host_port(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} ([v6]:port for IPv6)") from exc
    return value


@node.command("join")
@click.option("--head", "head", required=True, callback=_host_port, help="The head's HOST:PORT.")
@_name
@_gpus
@_token
@_dry
def node_join(
    head: str, name: str | None, gpus: int | None, token_file: str, dry_run: bool
) -> None:
    """Join this GPU host to the cluster whose head runs at HOST:PORT."""
    from llama_orch.pool.launch.ray import (
        JoinRefused,
        check_name_free,
        check_versions,
        head_state,
        start_argv,
        versions,
    )

    token = _token_file(token_file)
    count = _gpu_count(gpus)
    host = _host_name(name)
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token})
    try:
        state = head_state(head, token)
        check_versions(state.versions, versions())
        check_name_free(host, state)
    except JoinRefused as exc:
        _fail(str(exc))
    argv = start_argv(_ray_bin(), host=host, gpus=count, head=head)
    _start(argv, token, dry_run)
