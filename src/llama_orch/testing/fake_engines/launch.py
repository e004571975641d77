"""Fake engines as launchable executables with the real engines' command lines (simulated).

``python -m llama_orch.testing.fake_engines.launch PROGRAM ARGS...`` where PROGRAM is the name
of the real executable and ARGS are that executable's own flags:

- ``llama-server -m MODEL --host H --port P -c CTX -np SLOTS -ngl N [--alias NAME] ...``
- ``vllm serve MODEL --host H --port P --served-model-name NAME --max-model-len N ...``
- ``text-generation-launcher --model-id MODEL --hostname H --port P ...``
- ``tritonserver --model-repository DIR --http-port P ...``

Like the real engines it refuses a model that is not there (and a ``.gguf`` that is not GGUF),
binds the port it was given (exiting non-zero when it is taken) and exits on SIGTERM. Whatever it
serves says "simulated". Test knobs come from the environment, so a provisioner launches it
exactly as it launches the real engine:

- ``FAKE_ENGINE_TTFT_MS`` / ``FAKE_ENGINE_TOKENS_PER_S``: pace;
- ``FAKE_ENGINE_LOAD_MS``: time spent "loading" (llama.cpp answers 503 meanwhile);
- ``FAKE_ENGINE_FAULTS``: a file read at start whose content names a fault: ``exit_at_start``
  (exit 1 before binding), ``never_healthy`` (health answers 503 forever) or ``ignore_sigterm``
  (an engine slow to shut down: only SIGINT or SIGKILL ends it), or ``exit_echoing:NAME``
  (exit 1 with a last log line quoting the value of the variable NAME, as an engine refusing
  a setting does), or ``chatty:BYTES`` (once listening, writes BYTES of numbered log lines to
  stderr quickly, then ``simulated: chatty done``). Tests rewrite the file between launches to
  script crash loops and recoveries;
- ``FAKE_ENGINE_HEALTH_LOG``: a file to which each health probe the engine answers appends a
  line ``PID PATH``, so a test can wait for a number of probes instead of sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from llama_orch.testing.fake_engines._gguf import GgufError, is_gguf, read_metadata
from llama_orch.testing.fake_engines._server import Behaviour, FakeEngine
from llama_orch.testing.fake_engines.llamacpp import FakeLlamaCpp
from llama_orch.testing.fake_engines.openai_compat import FakeVllm
from llama_orch.testing.fake_engines.tgi import FakeTgi
from llama_orch.testing.fake_engines.triton import FakeTriton

#: Exit status when the model cannot be loaded or the port cannot be bound.
EXIT_LOAD_FAILED = 1


def _llama_server(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="llama-server")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-c", "--ctx-size", type=int, default=4096)
    p.add_argument("-np", "--parallel", type=int, default=1)
    p.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", dest="n_gpu_layers", default="0")
    p.add_argument("-a", "--alias", default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--metrics", action="store_true")
    p.add_argument("-nocb", "--no-cont-batching", action="store_true")
    p.add_argument("--slots", action="store_true")
    p.add_argument("-ts", "--tensor-split", default=None)
    return p.parse_known_args(argv)


def _vllm(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="vllm")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("model")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", default=None)
    serve.add_argument("--max-model-len", type=int, default=4096)
    serve.add_argument("--tensor-parallel-size", type=int, default=1)
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    serve.add_argument("--api-key", default=None)
    return p.parse_known_args(argv)


def _tgi(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="text-generation-launcher")
    p.add_argument("--model-id", required=True)
    p.add_argument("--hostname", default="127.0.0.1")
    p.add_argument("-p", "--port", type=int, default=3000)
    p.add_argument("--max-input-tokens", type=int, default=3072)
    p.add_argument("--max-total-tokens", type=int, default=4096)
    p.add_argument("--max-concurrent-requests", type=int, default=128)
    p.add_argument("--num-shard", type=int, default=1)
    return p.parse_known_args(argv)


def _triton(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="tritonserver")
    p.add_argument("--model-repository", required=True)
    p.add_argument("--http-address", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    return p.parse_known_args(argv)


def _check_model(path_text: str, *, must_exist: bool = True) -> str:
    """The name the fake serves; exits like an engine whose model fails to load."""
    path = Path(path_text)
    if not path.exists():
        if must_exist:
            _fail(f"failed to load model '{path_text}': no such file or directory")
        return path_text
    if path.is_file() and (path.suffix == ".gguf" or is_gguf(path)):
        try:
            meta = read_metadata(path)
        except GgufError as exc:
            _fail(f"failed to load model '{path_text}': {exc}")
        name = meta.get("general.name")
        print(f"simulated: loaded GGUF {path.name} ({len(meta)} metadata keys)", file=sys.stderr)
        return str(name) if isinstance(name, str) and name else path.stem
    return path.name


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_LOAD_FAILED)


def build(program: str, argv: list[str]) -> tuple[FakeEngine, int, list[str]]:
    """The fake for ``program`` configured from the real engine's flags, its port, and the
    flags it ignores."""
    behaviour = Behaviour(
        ttft_ms=float(os.environ.get("FAKE_ENGINE_TTFT_MS", "0")),
        tokens_per_s=float(os.environ.get("FAKE_ENGINE_TOKENS_PER_S", "0")),
    )
    common: dict[str, Any] = {"behaviour": behaviour}
    name = Path(program).name
    if name == "llama-server":
        a, rest = _llama_server(argv)
        loaded = _check_model(a.model)
        model = a.alias or loaded
        fake: FakeEngine = FakeLlamaCpp(
            slots=a.parallel, n_ctx=a.ctx_size, model=model, host=a.host, port=a.port, **common
        )
    elif name == "vllm":
        a, rest = _vllm(argv)
        loaded = _check_model(a.model)
        served = a.served_model_name or loaded
        fake = FakeVllm(
            max_model_len=a.max_model_len, model=served, host=a.host, port=a.port, **common
        )
    elif name == "text-generation-launcher":
        a, rest = _tgi(argv)
        _check_model(a.model_id)
        fake = FakeTgi(
            max_input_tokens=a.max_input_tokens,
            max_total_tokens=a.max_total_tokens,
            max_concurrent_requests=a.max_concurrent_requests,
            model=a.model_id,
            host=a.hostname,
            port=a.port,
            **common,
        )
    elif name == "tritonserver":
        a, rest = _triton(argv)
        repo = Path(a.model_repository)
        if not repo.is_dir():
            _fail(f"failed to stat model repository '{repo}'")
        models = sorted(p.name for p in repo.iterdir() if p.is_dir())
        fake = FakeTriton(
            model=models[0] if models else "vllm_model",
            host=a.http_address,
            port=a.http_port,
            **common,
        )
    else:
        _fail(f"no simulated engine named {name!r}")
        raise AssertionError  # unreachable: _fail exits
    return fake, int(getattr(a, "port", 0) or getattr(a, "http_port", 0)), rest


#: The health routes of every simulated engine (what ``FAKE_ENGINE_HEALTH_LOG`` records).
_HEALTH_PATHS = frozenset({"/health", "/v1/health", "/ping", "/v2/health/live", "/v2/health/ready"})


class _HealthLog:
    """Appends ``PID PATH`` to a file for every health request the engine answers."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self._app = app
        self._path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)
        if scope["type"] == "http" and scope["path"] in _HEALTH_PATHS:
            # One short line after the answer: a probe's own timing is not what it measures.
            _append(self._path, f"{os.getpid()} {scope['path']}\n")


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as log:
        log.write(line)


def _fault() -> str:
    path = os.environ.get("FAKE_ENGINE_FAULTS")
    if not path:
        return ""
    try:
        return Path(path).read_text().strip()
    except FileNotFoundError:
        return ""


async def serve(fake: FakeEngine, port: int, fault: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if sig is signal.SIGTERM and fault == "ignore_sigterm":
            loop.add_signal_handler(sig, lambda: None)
        else:
            loop.add_signal_handler(sig, stop.set)
    load_ms = float(os.environ.get("FAKE_ENGINE_LOAD_MS", "0"))
    if isinstance(fake, FakeLlamaCpp) and load_ms > 0:
        fake.behaviour.loading = True
    if fault == "never_healthy":
        fake.behaviour.health_status = 503
        fake.behaviour.loading = isinstance(fake, FakeLlamaCpp)
    try:
        await fake.start()
    except OSError as exc:
        _fail(f"couldn't bind HTTP server socket, port: {port}: {exc.strerror}")
    print(f"simulated {fake.kind} engine listening on {fake.url}", file=sys.stderr, flush=True)
    if fault.startswith("chatty:"):
        await _chatter(int(fault.removeprefix("chatty:")))
    try:
        if load_ms > 0 and fault != "never_healthy":
            await asyncio.sleep(load_ms / 1000)
            fake.behaviour.loading = False
        await stop.wait()
    finally:
        await fake.stop()


async def _chatter(total: int) -> None:
    """Log lines as an engine with verbose logging on writes them, 64 KiB at a time."""
    line, written = 0, 0
    while written < total:
        chunk = "".join(f"simulated log line {line + i:08d} {'.' * 70}\n" for i in range(640))
        line += 640
        written += os.write(2, chunk.encode())
        await asyncio.sleep(0.002)
    print("simulated: chatty done", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        _fail("usage: launch PROGRAM [ARGS...]")
    program, rest_argv = args[0], args[1:]
    fault = _fault()
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    print(
        f"simulated {Path(program).name}: CUDA_VISIBLE_DEVICES={devices}, no inference",
        file=sys.stderr,
        flush=True,
    )
    if fault == "exit_at_start":
        _fail("simulated fault: exiting at start")
    if fault.startswith("exit_echoing:"):
        name = fault.removeprefix("exit_echoing:")
        _fail(f"simulated fault: {name} is {os.environ.get(name, '')}, which is not accepted")
    fake, port, ignored = build(program, rest_argv)
    health_log = os.environ.get("FAKE_ENGINE_HEALTH_LOG")
    if health_log:
        fake.app = _HealthLog(fake.app, health_log)  # type: ignore[assignment]
    if ignored:
        print(f"simulated: ignoring flags {ignored}", file=sys.stderr, flush=True)
    runner: Callable[[Any], Any] = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    runner(serve(fake, port, fault))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
