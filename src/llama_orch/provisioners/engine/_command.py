"""The full command line of one replica: the prepared engine, its flags, its mask and port."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from llama_orch.config import PoolConfig
from llama_orch.provisioners.engine._engines import ENGINES, engine_args, runtime_gpu_flags
from llama_orch.provisioners.engine._types import PreparedEngine, ProvisionError

#: A variable holds a secret when one of its name's words says so (``HF_TOKEN``,
#: ``OPENAI_API_KEY``); ``..._TOKENS_PER_S`` does not.
_SECRET_ENV = re.compile(r"(?i)(?:^|_)(?:token|key|apikey|secret|password|passwd)(?:_|$)")


@dataclass(frozen=True, slots=True)
class ReplicaCommand:
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    #: Values to redact wherever the command line is logged.
    secrets: tuple[str, ...] = ()
    #: Run once the replica stopped: removes a container a killed runtime client left behind.
    cleanup: tuple[str, ...] = ()


def replica_command(
    prepared: PreparedEngine,
    pool: PoolConfig,
    *,
    model_path: str,
    port: int,
    devices: tuple[int, ...],
    name: str,
    host: str = "127.0.0.1",
) -> ReplicaCommand:
    """``name`` names the container in container mode (unique per replica)."""
    env = dict(prepared.env)
    secrets = tuple(v for k, v in env.items() if v and _SECRET_ENV.search(k))
    if prepared.provisioning_mode == "container":
        runtime = prepared.runtime
        assert runtime is not None and prepared.image_ref is not None
        kind = ENGINES[prepared.engine]
        model_dir = Path(model_path).parent if Path(model_path).is_file() else Path(model_path)
        argv = [runtime, "run", "--rm", "--name", name, *runtime_gpu_flags(runtime, devices)]
        argv += ["-p", f"{host}:{port}:{port}", "-v", f"{model_dir}:{model_dir}:ro"]
        # Values travel in the runtime's environment, never on its command line.
        for key in sorted(env):
            argv += ["-e", key]
        argv.append(prepared.image_ref)
        argv += kind.container_entry
        argv += engine_args(pool, model_path=model_path, host="0.0.0.0", port=port)
        return ReplicaCommand(tuple(argv), env, secrets, (runtime, "rm", "--force", name))
    if prepared.binary_path is None:
        raise ProvisionError("launch", f"{prepared.provisioning_mode} engines are not launched")
    argv = [prepared.binary_path]
    if prepared.engine == "vllm":
        argv.append("serve")
    argv += engine_args(pool, model_path=model_path, host=host, port=port)
    return ReplicaCommand(tuple(argv), env, secrets)
