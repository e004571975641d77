"""Each engine's command line: what its server executable is called and the flags it takes.

Pure functions of the pool config and the replica's model path, host and port, so the exact
command lines are unit-tested per engine and device mask. GPU-only (ORCH-3433): llama.cpp's
layer-offload flag is normalized to ``--n-gpu-layers`` and may never be 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_orch.config import PoolConfig
from llama_orch.provisioners.engine._types import ProvisionError
from llama_orch.vocab import DeterminismLevel

#: Offload every layer: llama.cpp clamps it to the model's layer count.
ALL_LAYERS = "999"
_NGL_SPELLINGS = ("-ngl", "--ngl", "--gpu-layers", "--n-gpu-layers")


@dataclass(frozen=True, slots=True)
class EngineKind:
    engine: str
    #: The server executable, as installed by binary/source/package modes.
    program: str
    #: The Python package that provides it, for package mode (None: not pip-installable).
    package: str | None
    #: Arguments the image needs before the engine flags (images without an entrypoint).
    container_entry: tuple[str, ...] = ()
    #: The path that answers 200 once the engine has loaded its model.
    health_path: str = "/health"


ENGINES: dict[str, EngineKind] = {
    "llamacpp": EngineKind("llamacpp", "llama-server", None),
    "vllm": EngineKind("vllm", "vllm", "vllm", ("serve",)),
    "tgi": EngineKind("tgi", "text-generation-launcher", None),
    "triton": EngineKind("triton", "tritonserver", None, ("tritonserver",), "/v2/health/ready"),
}


def normalize_gpu_layers(flags: list[str] | tuple[str, ...]) -> tuple[list[str], str]:
    """Split the layer-offload flag out of ``flags``: (other flags, layers). Refuses 0."""
    rest: list[str] = []
    layers = ALL_LAYERS
    items = list(flags)
    i = 0
    while i < len(items):
        flag, eq, value = items[i].partition("=")
        if flag in _NGL_SPELLINGS:
            if not eq:
                if i + 1 >= len(items):
                    raise ProvisionError("preflight", f"{flag} needs a value (e.g. {flag} 999)")
                value = items[i + 1]
                i += 1
            layers = value
        else:
            rest.append(items[i])
        i += 1
    if layers.strip() in ("0", "-0"):
        raise ProvisionError(
            "preflight",
            "--n-gpu-layers 0 would run the model on the CPU, which llama-orch never does; "
            "remove the flag (all layers are offloaded) or give a positive number",
        )
    return rest, layers


def engine_args(pool: PoolConfig, *, model_path: str, host: str, port: int) -> list[str]:
    """The engine's own flags for one replica (without the program name)."""
    flags = list(pool.provisioning.flags or []) if pool.provisioning else []
    engine = pool.engine.value
    n_devices = max(1, len(pool.devices or []))
    if engine == "llamacpp":
        rest, layers = normalize_gpu_layers(flags)
        args = ["--model", model_path, "--host", host, "--port", str(port)]
        args += ["--alias", pool.model, "--parallel", str(pool.slots)]
        if pool.ctx is not None:
            # llama-server divides the context among its slots.
            args += ["--ctx-size", str(pool.ctx * pool.slots)]
        args += ["--n-gpu-layers", layers, "--metrics"]
        if pool.determinism is DeterminismLevel.STRICT:
            # Batched decoding changes the floating-point order, and so the tokens a seed gives.
            args += ["--no-cont-batching"]
        if pool.tensor_split:
            args += ["--split-mode", "layer"]
            args += ["--tensor-split", ",".join(f"{r:g}" for r in pool.tensor_split)]
        return args + rest
    if engine == "vllm":
        args = [model_path, "--host", host, "--port", str(port)]
        args += ["--served-model-name", pool.model, "--tensor-parallel-size", str(n_devices)]
        args += ["--max-num-seqs", str(pool.slots)]
        if pool.ctx is not None:
            args += ["--max-model-len", str(pool.ctx)]
        return args + flags
    if engine == "tgi":
        args = ["--model-id", model_path, "--hostname", host, "--port", str(port)]
        args += ["--num-shard", str(n_devices), "--max-concurrent-requests", str(pool.slots)]
        if pool.ctx is not None:
            args += ["--max-total-tokens", str(pool.ctx)]
        return args + flags
    if engine == "triton":
        args = ["--model-repository", model_path, "--http-address", host]
        return [*args, "--http-port", str(port), "--allow-grpc=false", *flags]
    raise ProvisionError("plan", f"engine {engine} cannot be launched by llama-orch")


def runtime_gpu_flags(runtime: str, devices: tuple[int, ...]) -> list[str]:
    """How podman (CDI) or docker hands the replica exactly its device mask."""
    if not devices:
        return []
    if runtime.endswith("podman"):
        return [arg for d in devices for arg in ("--device", f"nvidia.com/gpu={d}")]
    mask = ",".join(map(str, devices))
    # docker parses --gpus as CSV: several devices must be quoted inside the value.
    return ["--gpus", f'"device={mask}"' if len(devices) > 1 else f"device={mask}"]
