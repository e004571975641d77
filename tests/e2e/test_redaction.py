"""No secret reaches a log line, an error body or an SSE frame (ORCH-3037, ORCH-3613, ORCH-3257).

Traffic carries known secrets: the server's AUTH_TOKEN, the upstream API keys of two OpenAI-style
pools (one key right, one wrong, which the fake engine echoes back in its 401), an ``sk-`` key and
URL credentials. Every rendered log line and every response body is then searched for them.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import httpx

from llama_orch.testing.fake_engines import start_fake
from tests.support.launched import launched_setup
from tests.support.serve_process import serve_process
from tests.support.server import config_of, mock_pool, running_server, task_body

AUTH_TOKEN = "redaction-auth-token-8c1e44d09b"
GOOD_KEY = "sk-upstream-good-5d7a19c3e2f4"
BAD_KEY = "sk-upstream-bad-0f9e8d7c6b5a"
LOOSE_KEY = "sk-live-9a8b7c6d5e4f3a2b"
URL_PASSWORD = "hunter2-url-password"
SECRETS = (AUTH_TOKEN, GOOD_KEY, BAD_KEY, LOOSE_KEY, URL_PASSWORD)
BEARER = {"Authorization": f"Bearer {AUTH_TOKEN}"}


def openai_pool(pool_id: str, url: str, key_env: str, model: str) -> dict[str, object]:
    return {
        "id": pool_id,
        "engine": "openai",
        "model": model,
        "ctx": 4096,
        "devices": [0],
        "endpoint": url,
        "api_key_env": key_env,
        "provisioning": {"mode": "external"},
        "backoff": {"initial_ms": 1, "max_ms": 10},
        "http": {"probe_timeout_ms": 1000, "retries": 0},
    }


async def traffic(http: httpx.AsyncClient) -> list[httpx.Response]:
    """Requests that put each secret in a header, a path, a body or an upstream error."""
    leaky_prompt = f"fetch https://admin:{URL_PASSWORD}@example.com/?api_key={LOOSE_KEY}"
    good = task_body("gpt-sim", engine="openai", max_tokens=3, prompt=leaky_prompt)
    responses = [await http.post("/v1/tasks", json=good)]
    async with http.stream("GET", f"/v1/tasks/{good['task_id']}/stream") as stream:
        await stream.aread()
    responses.append(stream)
    requests = [
        http.post("/v1/tasks", json=task_body("m0", prompt=f"Bearer {AUTH_TOKEN}")),
        http.get(f"/v1/tasks/{AUTH_TOKEN}/stream"),
        http.get(f"/v1/tasks/{LOOSE_KEY}/stream"),
        http.get(f"/v1/tasks/{GOOD_KEY}/cancel"),
        http.get("/v1/capabilities", headers={"X-Api-Key": GOOD_KEY}),
        http.get("/v1/capabilities", headers={"Authorization": f"Bearer {BAD_KEY}"}),
        http.get(f"/metrics?api_key={LOOSE_KEY}"),
        http.get("/v1/pools/bad/health"),
        http.get("/v1/pools/good/health"),
        http.post("/v1/tasks", content=b'{"prompt": "' + AUTH_TOKEN.encode() + b'", "x": }'),
        http.post("/v1/tasks", json=task_body("gpt-bad", engine="openai", max_tokens=2)),
    ]
    for request in requests:
        responses.append(await request)
    return responses


class TestRedaction:
    async def test_no_secret_in_logs_or_responses(self) -> None:
        """Every known secret has zero hits across all log lines and all response bodies."""
        env = {"AUTH_TOKEN": AUTH_TOKEN, "GOOD_KEY": GOOD_KEY, "BAD_KEY": BAD_KEY}
        logs = io.StringIO()
        async with (
            start_fake("openai", api_key=GOOD_KEY, model="gpt-sim") as good_engine,
            start_fake("openai", api_key=GOOD_KEY, model="gpt-bad") as bad_engine,
        ):
            config = config_of(
                mock_pool(),
                openai_pool("good", good_engine.url, "GOOD_KEY", "gpt-sim"),
                openai_pool("bad", bad_engine.url, "BAD_KEY", "gpt-bad"),
            )
            async with running_server(config, env, client_headers=BEARER, log_stream=logs) as srv:
                # The bad pool's failed readiness probes are logged before the traffic: wait
                # for one to have failed rather than for a time a loaded machine may not use.
                bad = srv.deps.pools.pools["bad"]
                for _ in range(3000):
                    if bad.last_error:
                        break
                    await asyncio.sleep(0.01)
                assert bad.last_error, "the bad pool's probes never failed"
                responses = await traffic(srv.client)
        bodies = "\n".join(r.text for r in responses)
        lines = logs.getvalue().splitlines()
        hits = {s: [line for line in [*lines, bodies] if s in line] for s in SECRETS}
        assert {s: [] for s in SECRETS} == hits
        # The traffic really happened and was logged: a streamed task and refusals.
        assert 202 == responses[0].status_code and "event: end" in responses[1].text
        assert any('"code":"BAD_TOKEN"' in r.text for r in responses)
        assert len(lines) > 10


ENGINE_SECRET = "engine-licence-7f3a9c2e1d8b"


def test_a_secret_an_engine_prints_stays_out_of_health_status_and_logs(tmp_path: Path) -> None:
    """A pool's provisioning.env value the engine quotes as it exits was shown verbatim in the
    pool's last exit (health, status) and the server log: no pattern knows its shape. Every
    config value under a secret-looking name is now redacted by value."""
    with launched_setup(tmp_path) as setup:
        setup.faults.write_text("exit_echoing:ENGINE_LICENSE_TOKEN")
        pool = setup.pool(env={"ENGINE_LICENSE_TOKEN": ENGINE_SECRET})
        config = setup.config(pool).model_dump(mode="json", exclude_unset=True)
        with serve_process(config, tmp_path) as served, httpx.Client(base_url=served.url) as c:
            for _ in range(800):
                health = c.get("/v1/pools/lp/health").text
                if "not accepted" in health:
                    break
                time.sleep(0.05)
            status = c.get("/v1/status").text
        log = served.log_path.read_text(encoding="utf-8")
    assert "ENGINE_LICENSE_TOKEN is [REDACTED], which is not accepted" in health
    assert [] == [text for text in (health, status, log) if ENGINE_SECRET in text]


class TestLargeAnswers:
    async def test_a_large_answer_is_redacted_whole(self, tmp_path: Path) -> None:
        """An answer of a few hundred KiB (redacted off the event loop, in pieces) loses the
        secrets it holds at its start, in its middle and at its end, and keeps everything
        else; a small request sent alongside it is answered too."""
        config = config_of(mock_pool(), server={"artifacts_dir": str(tmp_path)})
        lines = [f"line {i} of an engine's long log" for i in range(12_000)]
        for at in (0, len(lines) // 2, len(lines) - 1):
            lines[at] = f"{lines[at]} said {AUTH_TOKEN} and {LOOSE_KEY}"
        doc = {"kind": "plan", "tags": [], "content": {"lines": lines}, "metadata": {}}
        env = {"AUTH_TOKEN": AUTH_TOKEN}
        async with running_server(config, env, client_headers=BEARER) as srv:
            created = await srv.client.post("/v1/artifacts", json=doc)
            assert 201 == created.status_code, created.text
            large, small = await asyncio.gather(
                srv.client.get(f"/v1/artifacts/{created.json()['id']}"),
                srv.client.get("/v1/capabilities"),
            )
        assert (200, 200) == (large.status_code, small.status_code)
        assert len(large.content) > 256 * 1024
        assert AUTH_TOKEN not in large.text and LOOSE_KEY not in large.text
        shown = large.json()["content"]["lines"]
        assert 3 == sum(line.endswith("said [REDACTED] and [REDACTED]") for line in shown)
        assert lines[1] == shown[1] and len(lines) == len(shown)
