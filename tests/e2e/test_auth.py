"""Minimal auth end to end (SPEC §13, D-TEST-01): a real server on 127.0.0.1, real HTTP, real CLI.

Non-loopback peers cannot be produced on a loopback socket; the middleware tests in
tests/unit/server/test_middleware.py inject them through the ASGI scope instead.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import httpx

from llama_orch.auth.tokens import token_identity
from tests.support.narration import NarrationLog
from tests.support.serve_process import serve_process
from tests.support.server import config_of, running_server, task_body, yaml_config

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "e2e-auth-token-6f1d2c3b4a5e"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
TOKEN_ENV = {"AUTH_TOKEN": TOKEN}
OPTIONAL_ENV = {"AUTH_TOKEN": TOKEN, "AUTH_OPTIONAL": "true"}


async def llorch(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the CLI as a user would, without any auth variables of the test's own environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "LLORCH_"))}
    clean.pop("BIND_ADDR", None)
    clean.pop("ORCHD_ADDR", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llama_orch",
        *args,
        cwd=ROOT,
        env={**clean, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def assert_refusal(response: httpx.Response, status: int, code: str, code_id: int) -> None:
    body = response.json()
    assert (status, code, code_id) == (response.status_code, body["code"], body["code_id"])
    assert body["message"] and body["hint"]
    assert response.headers["x-correlation-id"] == body["correlation_id"]


class TestSixScenarios:
    """The six auth scenarios of D-TEST-01, in their order."""

    async def test_loopback_optional_without_token(self, narration: NarrationLog) -> None:
        """Loopback, AUTH_OPTIONAL=true, no token: 200, and the logs say identity=localhost."""
        async with running_server(config_of(), OPTIONAL_ENV) as srv:
            body = task_body(max_tokens=2)
            admitted = await srv.submit(body)
            await srv.stream(body["task_id"])
            capabilities = await srv.client.get("/v1/capabilities")
        assert (202, 200) == (admitted.status_code, capabilities.status_code)
        assert {"localhost"} == {e["identity"] for e in narration.events("request")}
        assert "localhost" == narration.one("admit")["identity"]

    async def test_loopback_required_without_token(self) -> None:
        """Loopback, AUTH_OPTIONAL=false, no token sent: 401 MISSING_TOKEN (40101)."""
        async with running_server(config_of(), TOKEN_ENV) as srv:
            response = await srv.submit(task_body())
        assert_refusal(response, 401, "MISSING_TOKEN", 40101)

    async def test_non_loopback_bind_without_token_refuses_to_start(self, tmp_path: Path) -> None:
        """`llorch serve` on 0.0.0.0 without a token exits 2 naming 40301 and the fix."""
        config = tmp_path / "lan.yaml"
        config.write_text(yaml_config(config_of().model_dump(mode="json")))
        by_flag, by_env, by_alias = await asyncio.gather(
            llorch("serve", "--config", str(config), "--bind", "0.0.0.0:18080"),
            llorch("serve", "--config", str(config), env={"BIND_ADDR": "0.0.0.0:18080"}),
            llorch("serve", "--config", str(config), env={"ORCHD_ADDR": "192.168.7.7:18080"}),
        )
        for code, _, err in (by_flag, by_env, by_alias):
            assert 2 == code
            assert "NON_LOOPBACK_WITHOUT_TOKEN (40301)" in err
            assert "AUTH_TOKEN" in err and "llorch token new" in err
            assert "Traceback" not in err

    async def test_wrong_token(self) -> None:
        """A wrong token gets 401 BAD_TOKEN (40102), even from loopback with AUTH_OPTIONAL."""
        async with running_server(config_of(), OPTIONAL_ENV) as srv:
            response = await srv.client.get(
                "/v1/capabilities", headers={"Authorization": "Bearer not-the-token"}
            )
        assert_refusal(response, 401, "BAD_TOKEN", 40102)

    async def test_right_token(self, narration: NarrationLog) -> None:
        """The right token gets 200 and identity=token:<fp6>; the token itself is never logged."""
        async with running_server(config_of(), TOKEN_ENV, client_headers=BEARER) as srv:
            body = task_body(max_tokens=2)
            admitted = await srv.submit(body)
            frames = await srv.stream(body["task_id"])
        assert (202, "end") == (admitted.status_code, frames[-1][0])
        expected = token_identity(TOKEN)
        assert {expected} == {e["identity"] for e in narration.events("request")}
        assert expected == narration.one("admit")["identity"]
        assert TOKEN not in str(narration.entries)

    async def test_worker_registration_without_token(self) -> None:
        """Worker registration needs the token even on an open loopback server (AUTH-1003)."""
        async with running_server(config_of()) as open_srv:
            tokenless = await open_srv.client.post("/v1/workers/register")
        async with running_server(config_of(), OPTIONAL_ENV) as srv:
            anonymous = await srv.client.post("/v1/workers/register")
            # No registration endpoint exists (the pool manager is in-process): past auth, 404.
            with_token = await srv.client.post("/v1/workers/register", headers=BEARER)
        assert_refusal(tokenless, 401, "MISSING_TOKEN", 40101)
        assert_refusal(anonymous, 401, "MISSING_TOKEN", 40101)
        assert 404 == with_token.status_code


class TestScope:
    async def test_metrics_health_and_capabilities_are_not_exempt(self) -> None:
        """/metrics, pool health and capabilities need the token like everything else."""
        paths = ["/metrics", "/v1/pools/p0/health", "/v1/capabilities", "/openapi/data.yaml"]
        async with running_server(config_of(), TOKEN_ENV) as srv:
            refused = [(await srv.client.get(p)).status_code for p in paths]
            allowed = [(await srv.client.get(p, headers=BEARER)).status_code for p in paths]
        assert ([401] * 4, [200] * 4) == (refused, allowed)

    async def test_open_loopback_default_without_token(self) -> None:
        """With no token configured at all, loopback callers are served (ORCH-3035)."""
        async with running_server(config_of()) as srv:
            response = await srv.client.get("/metrics")
        assert 200 == response.status_code


class TestForwardedFor:
    async def test_ignored_unless_trusted(self) -> None:
        """Without TRUST_PROXY_AUTH a forwarded LAN address changes nothing for a loopback peer."""
        spoof = {"X-Forwarded-For": "192.168.1.50"}
        async with running_server(config_of(), OPTIONAL_ENV, client_headers=spoof) as srv:
            response = await srv.client.get("/v1/capabilities")
        assert 200 == response.status_code

    async def test_trusted_proxy_forwards_lan_client(self) -> None:
        """With TRUST_PROXY_AUTH the forwarded LAN client is not loopback: it needs the token."""
        env = {**OPTIONAL_ENV, "TRUST_PROXY_AUTH": "true"}
        forwarded = {"X-Forwarded-For": "192.168.1.50"}
        async with running_server(config_of(), env) as srv:
            refused = await srv.client.get("/v1/capabilities", headers=forwarded)
            injected = await srv.client.get("/v1/capabilities", headers={**forwarded, **BEARER})
            local = await srv.client.get("/v1/capabilities")
        assert_refusal(refused, 401, "MISSING_TOKEN", 40101)
        assert (200, 200) == (injected.status_code, local.status_code)


class TestProductionServer:
    def test_granian_does_not_rewrite_the_peer(self, tmp_path: Path) -> None:
        """`llorch serve` ignores X-Forwarded-For unless trusted, and logs identity as JSON."""
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        forwarded = {"X-Forwarded-For": "192.168.1.50"}
        statuses = []
        for trust in ("false", "true"):
            env = {"AUTH_TOKEN_FILE": str(token_file), "AUTH_OPTIONAL": "true"}
            env["TRUST_PROXY_AUTH"] = trust
            config = config_of().model_dump(mode="json")
            with (
                serve_process(config, tmp_path, environ=env) as proc,
                httpx.Client(base_url=proc.url) as http,
            ):
                statuses.append(http.get("/metrics", headers=forwarded).status_code)
                http.get("/metrics", headers=BEARER)
            log = proc.log_path.read_text()
        assert [200, 401] == statuses
        assert f'"identity":"{token_identity(TOKEN)}"' in log and TOKEN not in log


class TestCli:
    async def test_token_new(self, tmp_path: Path) -> None:
        """`llorch token new` prints a fresh strong token, or writes it to a 0600 file."""
        (code_a, out_a, _), (code_b, out_b, _) = await asyncio.gather(
            llorch("token", "new"), llorch("token", "new")
        )
        path = tmp_path / "token"
        code_c, _, err_c = await llorch("token", "new", "--file", str(path))
        assert (0, 0, 0) == (code_a, code_b, code_c)
        assert out_a != out_b and len(out_a.strip()) >= 43
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        assert token_identity(path.read_text().strip()) in err_c

    async def test_token_new_creates_the_folder(self, tmp_path: Path) -> None:
        """`--file ~/.config/llama-orch/token` works on a machine without that folder yet: the
        folder that holds the token is made private (0700), as the token is."""
        path = tmp_path / "config" / "llama-orch" / "token"
        code, _, err = await llorch("token", "new", "--file", str(path))
        assert 0 == code, err
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        assert 0o700 == stat.S_IMODE(path.parent.stat().st_mode)

    async def test_cli_sends_the_token(self, tmp_path: Path) -> None:
        """submit uses LLORCH_TOKEN or --token-file; without either it reports MISSING_TOKEN."""
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        async with running_server(config_of(), TOKEN_ENV) as srv:
            args = ("submit", "hi", "--url", srv.url, "--max-tokens", "2")
            by_env, by_file, by_file_env, missing = await asyncio.gather(
                llorch(*args, env={"LLORCH_TOKEN": TOKEN}),
                llorch(*args, "--token-file", str(token_file)),
                llorch(*args, env={"LLORCH_TOKEN_FILE": str(token_file)}),
                llorch(*args),
            )
        assert [0, 0, 0, 1] == [r[0] for r in (by_env, by_file, by_file_env, missing)]
        assert "MISSING_TOKEN" in missing[2] and "hint" in missing[2]
