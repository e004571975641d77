"""Steps of the auth scenarios: tokens on the server's side and the client's."""

from __future__ import annotations

import os
import subprocess
import sys

from pytest_bdd import given, parsers, then, when

from tests.bdd.world import World
from tests.support.serve_process import free_port
from tests.support.server import SIMULATED_GPUS

TOKEN = "bdd-auth-token-3c2b1a0f9e8d"


def _token_file(scene: World) -> str:
    path = scene.workdir / "token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    return str(path)


@given("tokens are configured but optional on loopback")
def tokens_optional(scene: World) -> None:
    scene.environ.update({"AUTH_TOKEN_FILE": _token_file(scene), "AUTH_OPTIONAL": "true"})


@given("tokens are configured and required")
def tokens_required(scene: World) -> None:
    scene.environ.update({"AUTH_TOKEN_FILE": _token_file(scene), "AUTH_OPTIONAL": "false"})


@given(parsers.parse('I send the token "{token}"'))
def send_token(scene: World, token: str) -> None:
    scene.headers["Authorization"] = f"Bearer {token}"


@given("I send the configured token")
def send_configured_token(scene: World) -> None:
    scene.headers["Authorization"] = f"Bearer {TOKEN}"


@when("I register a worker")
def register_worker(scene: World) -> None:
    scene.response = scene.client.post("/v1/workers/register")


@when("I start a server bound to 0.0.0.0 without a token")
def start_open_lan_server(scene: World) -> None:
    import yaml

    config = scene.workdir / "lan.yaml"
    pools = [{"id": "p0", "engine": "mock", "model": "m0", "ctx": 4096, "devices": [0]}]
    config.write_text(yaml.safe_dump({"gpus": SIMULATED_GPUS, "pools": pools}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "LLORCH_"))}
    command = [sys.executable, "-m", "llama_orch", "serve", "--config", str(config)]
    command += ["--bind", f"0.0.0.0:{free_port()}"]
    scene.extra["exit"] = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@then(parsers.parse("it exits with status {status:d} naming {code}"))
def exits_naming(scene: World, status: int, code: str) -> None:
    done: subprocess.CompletedProcess[str] = scene.extra["exit"]
    assert status == done.returncode, done.stderr
    assert code in done.stderr
    assert "Traceback" not in done.stderr
