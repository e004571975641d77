"""Exact replica command lines per engine, mode and device mask."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from llama_orch.config import PoolConfig
from llama_orch.provisioners.engine import (
    PreparedEngine,
    ProvisionError,
    normalize_gpu_layers,
    replica_command,
)


def _pool(engine: str, **extra: Any) -> PoolConfig:
    prov = extra.pop(
        "provisioning",
        {
            "mode": "binary",
            "binary": {
                "url": "https://x/a.tgz",
                "checksum": "sha256:" + "0" * 64,
            },
        },
    )
    return PoolConfig.model_validate(
        {"id": "p", "engine": engine, "model": "m", "provisioning": prov, **extra}
    )


def _binary(engine: str, path: str) -> PreparedEngine:
    return PreparedEngine(
        engine=engine, engine_version="v", provisioning_mode="binary", binary_path=path
    )


class TestLlamaCpp:
    def test_full_command(self) -> None:
        """Model, loopback host, port, alias, slots, per-slot ctx, all layers on the GPU."""
        pool = _pool("llamacpp", slots=2, ctx=4096, devices=[1])
        cmd = replica_command(
            _binary("llamacpp", "/e/llama-server"),
            pool,
            model_path="/m/x.gguf",
            port=9001,
            devices=(1,),
            name="n",
        )
        assert (
            "/e/llama-server",
            "--model",
            "/m/x.gguf",
            "--host",
            "127.0.0.1",
            "--port",
            "9001",
            "--alias",
            "m",
            "--parallel",
            "2",
            "--ctx-size",
            "8192",
            "--n-gpu-layers",
            "999",
            "--metrics",
        ) == cmd.argv

    def test_strict_determinism_runs_one_sequence(self) -> None:
        """determinism: strict launches one slot with continuous batching off."""
        pool = _pool("llamacpp", determinism="strict")
        argv = replica_command(
            _binary("llamacpp", "/e/llama-server"),
            pool,
            model_path="/m/x.gguf",
            port=9001,
            devices=(0,),
            name="n",
        ).argv
        assert ("--parallel", "1") == argv[argv.index("--parallel") : argv.index("--parallel") + 2]
        assert "--no-cont-batching" in argv

    def test_strict_determinism_needs_one_slot(self) -> None:
        """A strict pool with several slots is refused, with the way to scale instead."""
        with pytest.raises(ValueError, match="set slots: 1"):
            _pool("llamacpp", determinism="strict", slots=4)

    @pytest.mark.parametrize("flags", [["-ngl", "40"], ["--ngl=40"], ["--gpu-layers", "40"]])
    def test_gpu_layer_spellings_normalize(self, flags: list[str]) -> None:
        """-ngl, --ngl and --gpu-layers all become --n-gpu-layers."""
        assert ([], "40") == normalize_gpu_layers(flags)

    def test_zero_gpu_layers_is_refused(self) -> None:
        """--n-gpu-layers 0 would be a CPU engine."""
        with pytest.raises(ProvisionError, match="CPU"):
            normalize_gpu_layers(["--n-gpu-layers", "0", "--flash-attn"])

    def test_tensor_split_over_the_mask(self) -> None:
        """An explicit split is passed with layer split mode."""
        pool = _pool("llamacpp", devices=[0, 1], tensor_split=[3, 1])
        argv = replica_command(
            _binary("llamacpp", "/e/llama-server"),
            pool,
            model_path="/m.gguf",
            port=1,
            devices=(0, 1),
            name="n",
        ).argv
        assert ("--split-mode", "layer", "--tensor-split", "3,1") == argv[-4:]


class TestOtherEngines:
    def test_vllm_strict_determinism_is_single_sequence(self) -> None:
        """A strict vLLM pool schedules one sequence at a time."""
        argv = replica_command(
            _binary("vllm", "/venv/bin/vllm"),
            _pool("vllm", determinism="strict"),
            model_path="/m/x",
            port=9001,
            devices=(0,),
            name="n",
        ).argv
        at = argv.index("--max-num-seqs")
        assert ("--max-num-seqs", "1") == argv[at : at + 2]

    def test_vllm_serve(self) -> None:
        """vllm serve MODEL with the pool's model as the served name and one shard per GPU."""
        pool = _pool("vllm", devices=[0, 1], slots=8, ctx=2048)
        argv = replica_command(
            _binary("vllm", "/venv/bin/vllm"),
            pool,
            model_path="/m/repo",
            port=8100,
            devices=(0, 1),
            name="n",
        ).argv
        assert (
            "/venv/bin/vllm",
            "serve",
            "/m/repo",
            "--host",
            "127.0.0.1",
            "--port",
            "8100",
            "--served-model-name",
            "m",
            "--tensor-parallel-size",
            "2",
            "--max-num-seqs",
            "8",
            "--max-model-len",
            "2048",
        ) == argv

    def test_tgi_launcher(self) -> None:
        """text-generation-launcher with shards and concurrency from the pool."""
        argv = replica_command(
            _binary("tgi", "/t/text-generation-launcher"),
            _pool("tgi"),
            model_path="/m",
            port=3001,
            devices=(0,),
            name="n",
        ).argv
        assert (
            "/t/text-generation-launcher",
            "--model-id",
            "/m",
            "--hostname",
            "127.0.0.1",
            "--port",
            "3001",
            "--num-shard",
            "1",
            "--max-concurrent-requests",
            "1",
        ) == argv


class TestContainer:
    def _prepared(self, runtime: str, engine: str = "vllm") -> PreparedEngine:
        return PreparedEngine(
            engine=engine,
            engine_version="v",
            provisioning_mode="container",
            image_ref="vllm/vllm-openai@sha256:ab",
            runtime=runtime,
            env={"HF_TOKEN": "hf_secretsecret"},
        )

    def test_podman_uses_cdi_devices(self, tmp_path: Any) -> None:
        """Rootless podman gets one --device nvidia.com/gpu=N per GPU of the mask."""
        pool = _pool("vllm", devices=[0, 2])
        cmd = replica_command(
            self._prepared("/usr/bin/podman"),
            pool,
            model_path=str(tmp_path),
            port=8200,
            devices=(0, 2),
            name="llorch-p-r0",
        )
        assert (
            "/usr/bin/podman",
            "run",
            "--rm",
            "--name",
            "llorch-p-r0",
            "--device",
            "nvidia.com/gpu=0",
            "--device",
            "nvidia.com/gpu=2",
            "-p",
            "127.0.0.1:8200:8200",
            "-v",
            f"{tmp_path}:{tmp_path}:ro",
            "-e",
            "HF_TOKEN",
            "vllm/vllm-openai@sha256:ab",
            "serve",
            str(tmp_path),
            "--host",
            "0.0.0.0",
        ) == cmd.argv[:20]
        assert "hf_secretsecret" not in " ".join(cmd.argv)
        assert ("hf_secretsecret",) == cmd.secrets

    def test_only_variables_named_as_secrets_are_secrets(self, tmp_path: Any) -> None:
        """A word of the name decides: ``..._TOKENS_PER_S=20`` is a setting, and taking it for a
        secret refused every launch whose command line happened to contain ``20``."""
        prepared = self._prepared("/usr/bin/podman")
        env = {
            "HF_TOKEN": "hf_secretsecret",
            "OPENAI_API_KEY": "sk-abcdefgh",
            "DB_PASSWORD": "pw-12345678",
            "FAKE_ENGINE_TOKENS_PER_S": "20",
            "KEYBOARD_LAYOUT": "us",
        }
        cmd = replica_command(
            dataclasses.replace(prepared, env=env),
            _pool("vllm", devices=[0]),
            model_path=str(tmp_path),
            port=8200,
            devices=(0,),
            name="llorch-p-r0",
        )
        assert {"hf_secretsecret", "sk-abcdefgh", "pw-12345678"} == set(cmd.secrets)

    @pytest.mark.parametrize(("devices", "value"), [((1,), "device=1"), ((0, 1), '"device=0,1"')])
    def test_docker_uses_gpus_device(self, devices: tuple[int, ...], value: str) -> None:
        """docker gets --gpus device=N, quoted when the mask has several GPUs."""
        cmd = replica_command(
            self._prepared("/usr/bin/docker"),
            _pool("vllm"),
            model_path="/m",
            port=1,
            devices=devices,
            name="n",
        )
        assert ["--gpus", value] == list(cmd.argv[5:7])
