"""A stand-in for podman/docker (simulated): records its argv, 'pulls' instantly, and 'runs' an
image by starting the fake engine that image would hold, with the engine arguments after it.

Installed by ``fake_runtime(dir, "podman", calls)`` as an executable named like the runtime.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

#: Options of ``run`` that take a value (as podman/docker define them).
_VALUED = {"--name", "--device", "--gpus", "-p", "--publish", "-v", "--volume", "-e", "--env"}
_PROGRAMS = (
    ("vllm", "vllm"),
    ("text-generation", "text-generation-launcher"),
    ("llama", "llama-server"),
)


def main(argv: list[str]) -> int:
    with Path(os.environ["FAKE_RUNTIME_CALLS"]).open("a") as calls:
        calls.write(json.dumps(argv) + "\n")
    if not argv or argv[0] == "pull":
        return 0
    if argv[0] != "run":
        return 0
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in _VALUED else 1
    image, engine_args = argv[i], argv[i + 1 :]
    if image.split("@")[0].endswith("tritonserver") or engine_args[:1] == ["tritonserver"]:
        program, engine_args = "tritonserver", engine_args[1:]
    else:
        program = next(p for key, p in _PROGRAMS if key in image)
    os.execv(
        sys.executable,
        [sys.executable, "-m", "llama_orch.testing.fake_engines.launch", program, *engine_args],
    )
    return 1


def fake_runtime(directory: Path, name: str, calls: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    root = Path(__file__).resolve().parents[2]
    path.write_text(
        f"#!/bin/sh\nFAKE_RUNTIME_CALLS={calls} PYTHONPATH={root} "
        f'exec "{sys.executable}" -m tests.support.fake_runtime "$@"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
