"""`llorch node join` and `llorch node head`: the `ray start` they run, the version check
against a real head, and the refusals (token file, unreachable head)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from ray.exceptions import AuthenticationError, RayError

import llama_orch
from llama_orch.pool.launch.ray import (
    VERSION_LABEL,
    JoinRefused,
    check_versions,
    head_refusal,
    release_label,
    start_argv,
    versions,
)
from tests.e2e.test_cli import run
from tests.support.cluster import LocalCluster

# The first test of the package also waits for the cluster to start (about 10-30 s).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def _token(tmp_path: Path, mode: int = 0o600) -> Path:
    token = tmp_path / "cluster.token"
    token.write_text("t" * 43 + "\n")
    token.chmod(mode)
    return token


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestNodeJoin:
    async def test_join_checks_the_head_and_starts_ray_with_the_hosts_gpus(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        token = _token(tmp_path)
        code, out, err = await run(
            "node", "join", "--head", cluster.address, "--token-file", str(token),
            "--name", "gpu-c", "--gpus", "2", "--dry-run",
        )  # fmt: skip
        assert 0 == code, err
        env, _, command = out.strip().partition(" ")
        assert f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token}" == f"{env} {command.split()[0]}"
        argv = command.split()[1:]
        assert argv[1:3] == ["start", "--disable-usage-stats"]
        assert f"--address={cluster.address}" in argv
        assert "--node-manager-port=6380" in argv and "--max-worker-port=10100" in argv
        resources = next(a for a in argv if a.startswith("--resources="))
        assert {"llorch_host_gpu-c": 1.0, "llorch_gpu_0": 1.0, "llorch_gpu_1": 1.0} == json.loads(
            resources.removeprefix("--resources=")
        )
        assert "token" not in " ".join(argv).replace("RAY_AUTH", "")

    async def test_a_name_already_in_the_cluster_is_refused(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        """A second host joining as `gpu-a` would share its resource: placement would pick
        either machine for gpu-a's pools."""
        code, out, err = await run(
            "node", "join", "--head", cluster.address, "--token-file", str(_token(tmp_path)),
            "--name", "gpu-a", "--gpus", "2", "--dry-run",
        )  # fmt: skip
        assert 1 == code, out
        assert "a host named gpu-a is already in the cluster" in err and "--name" in err
        assert "Traceback" not in err and "ray" not in out

    async def test_head_has_no_dashboard(self, tmp_path: Path) -> None:
        code, out, _ = await run(
            "node", "head", "--no-gpus", "--token-file", str(_token(tmp_path)), "--dry-run"
        )
        assert 0 == code
        assert "--head --port=6379 --include-dashboard=false" in out
        assert "--resources" not in out

    @pytest.mark.parametrize(("flag", "value"), [("--port", "-1"), ("--port", "70000")])
    async def test_an_impossible_port_is_refused_before_ray_starts(
        self, tmp_path: Path, flag: str, value: str
    ) -> None:
        token = str(_token(tmp_path))
        code, out, err = await run("node", "head", flag, value, "--token-file", token, "--dry-run")
        assert 2 == code and "Invalid value for '--port'" in err and "ray" not in out

    async def test_a_negative_gpu_count_is_refused(self, tmp_path: Path) -> None:
        token = str(_token(tmp_path))
        code, _, err = await run("node", "head", "--gpus", "-1", "--token-file", token, "--dry-run")
        assert 2 == code and "Invalid value for '--gpus'" in err

    async def test_a_token_others_can_read_is_refused(self, tmp_path: Path) -> None:
        token = _token(tmp_path, 0o644)
        code, _, err = await run(
            "node", "join", "--head", "127.0.0.1:6379", "--token-file", str(token), "--gpus", "1"
        )
        assert 1 == code and f"run `chmod 600 {token}`" in err

    async def test_an_unreachable_head_is_refused(self, tmp_path: Path) -> None:
        head = f"127.0.0.1:{_closed_port()}"
        code, _, err = await run(
            "node", "join", "--head", head, "--token-file", str(_token(tmp_path)), "--gpus", "1"
        )
        assert 1 == code and f"cannot reach the head at {head}" in err
        assert "Traceback" not in err

    async def test_a_head_that_is_not_host_port_is_a_usage_error(self, tmp_path: Path) -> None:
        """`--head garbage` is refused as a usage error (exit 2) before anything is tried."""
        code, _, err = await run(
            "node", "join", "--head", "gpu-a", "--token-file", str(_token(tmp_path)), "--gpus", "1"
        )
        assert 2 == code
        assert "Invalid value for '--head': expected host:port" in err

    async def test_an_ipv6_head_is_dialled_without_its_brackets(self, tmp_path: Path) -> None:
        """`--head [::1]:PORT` reaches ::1 (refused there), not a DNS lookup of "[::1]"."""
        head = f"[::1]:{_closed_port()}"
        code, _, err = await run(
            "node", "join", "--head", head, "--token-file", str(_token(tmp_path)), "--gpus", "1"
        )
        assert 1 == code and f"cannot reach the head at {head}" in err
        assert "Name or service not known" not in err and "Traceback" not in err


def test_a_version_mismatch_names_both_versions() -> None:
    here = versions()
    with pytest.raises(JoinRefused) as info:
        check_versions({"ray": "2.9.3", "python": "3.10.12"}, here)
    assert (
        f"the head runs Ray 2.9.3 on Python 3.10.12, this host has Ray {here['ray']} on "
        f"Python {here['python']}"
    ) in str(info.value)
    check_versions(dict(here), here)
    assert os.environ.get("RAY_AUTH_MODE") is None


def test_a_wrong_cluster_token_says_to_copy_the_heads() -> None:
    """Ray's own refusal (this text, from a head started with another token) advises making a
    new token, which can never match: the refusal says to copy the head's instead."""
    refused = AuthenticationError(
        "RPC error: InvalidAuthToken: Authentication token is missing or incorrect"
    )
    message = str(head_refusal("ws1:6379", refused, "/home/me/cluster.token"))
    assert "the head at ws1:6379 refused the cluster token in /home/me/cluster.token" in message
    assert "copy the head's token file" in message and "--generate" not in message
    other = head_refusal("ws1:6379", RayError("deadline exceeded"), "/t")
    assert "the head at ws1:6379 did not answer: deadline exceeded" == str(other)


def test_a_llama_orch_release_mismatch_is_refused() -> None:
    """The hosts import the engine actor's code from their own llama-orch: another release
    there would run other code than the server sends calls to."""
    here = versions()
    assert here["llama-orch"] == llama_orch.__version__
    with pytest.raises(JoinRefused) as info:
        check_versions({**here, "llama-orch": "0.0.9"}, here)
    assert (
        f"the head runs llama-orch 0.0.9, this host has llama-orch {llama_orch.__version__}"
    ) in str(info.value)
    # A head started without `llorch node head` does not say its release: not compared.
    check_versions({"ray": here["ray"], "python": here["python"]}, here)


def test_every_node_starts_labelled_with_its_llama_orch_release() -> None:
    for head in (None, "ws1:6379"):
        argv = start_argv("ray", host="ws2", gpus=1, head=head)
        assert f"--labels={VERSION_LABEL}={release_label()}" in argv
    assert "0.1.0_g1a2b" == release_label("0.1.0+g1a2b")
