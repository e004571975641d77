"""Container mode end to end against a recording stand-in for podman (simulated runtime)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from llama_orch.config import Config
from llama_orch.pool.engine_process import Supervision
from tests.support.fake_runtime import fake_runtime
from tests.support.launched import process_of, wait_health
from tests.support.server import SIMULATED_GPUS, running_server, task_body

DIGEST = "sha256:" + "cd" * 32


class TestContainerMode:
    async def test_podman_pull_run_serve_stop(self, tmp_path: Path) -> None:
        """Pull by digest, run with the CDI device of the mask, published loopback port and the
        model mounted read-only; the secret travels as a variable name only; a task streams."""
        calls = tmp_path / "calls.jsonl"
        bin_dir = tmp_path / "bin"
        fake_runtime(bin_dir, "podman", calls)
        model = tmp_path / "models" / "qwen-tiny"
        model.mkdir(parents=True)
        (model / "config.json").write_text('{"model_type": "qwen2"}')  # an empty folder is no model
        pool = {
            "id": "cv",
            "engine": "vllm",
            "model": str(model),
            "devices": [1],
            "provisioning": {
                "mode": "container",
                "container": {"image": "docker.io/vllm/vllm-openai", "digest": DIGEST},
                "env": {"HF_TOKEN": "hf_secretvalue123456"},
            },
            "http": {"probe_timeout_ms": 500, "retries": 0},
        }
        config = Config.model_validate(
            {
                "gpus": SIMULATED_GPUS,
                "catalog": {"root": str(tmp_path / "catalog")},
                "engines": {"cache_dir": str(tmp_path / "e"), "run_dir": str(tmp_path / "run")},
                "pools": [pool],
            }
        )

        def on_path(sup: Supervision) -> Supervision:
            provision = dataclasses.replace(sup.provision, path=f"{bin_dir}:/usr/bin:/bin")
            return dataclasses.replace(sup, provision=provision)

        async with running_server(config, supervision=on_path) as server:
            health = await wait_health(server, "cv", lambda h: h["ready"])
            assert "container" == health["provisioning_mode"]
            assert DIGEST == health["engine_digest"]
            body = task_body(str(model), engine="vllm", max_tokens=4, ctx=512)
            assert 202 == (await server.submit(body)).status_code
            assert "end" == (await server.stream(body["task_id"]))[-1][0]
            port = process_of(health)["endpoint"].rsplit(":", 1)[1]
        pull, run, remove = (json.loads(line) for line in calls.read_text().splitlines())
        assert ["rm", "--force", "llorch-cv-r0"] == remove
        assert ["pull", f"docker.io/vllm/vllm-openai@{DIGEST}"] == pull
        assert run[:9] == [
            "run",
            "--rm",
            "--name",
            "llorch-cv-r0",
            "--device",
            "nvidia.com/gpu=1",
            "-p",
            f"127.0.0.1:{port}:{port}",
            "-v",
        ]
        assert f"{model}:{model}:ro" == run[9]
        assert ["-e", "HF_TOKEN", f"docker.io/vllm/vllm-openai@{DIGEST}", "serve"] == run[10:14]
        assert "hf_secretvalue123456" not in calls.read_text()
        assert "hf_secretvalue123456" not in (tmp_path / "run/logs/cv-r0.log").read_text()
