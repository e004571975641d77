"""``python -m llama_orch.testing.fake_engines KIND [--port 0] ...``: serve one fake engine.

Prints the URL on the first line of stdout, then serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any, TextIO

from llama_orch.testing.fake_engines import FAKES, Behaviour


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m llama_orch.testing.fake_engines")
    parser.add_argument("kind", choices=sorted(FAKES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--model", default=None, help="model name the fake serves")
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument(
        "--tokens-per-s", type=float, default=0.0, help="0 streams as fast as possible"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=64,
        help="frames per write when streaming as fast as possible (1: one HTTP chunk per token)",
    )
    parser.add_argument("--slots", type=int, default=None, help="llamacpp: parallel slots")
    parser.add_argument("--api-key", default=None, help="openai: the bearer key to require")
    parser.add_argument(
        "--timings",
        default=None,
        help="append one JSON line per finished stream to this file: when its request was "
        "read and when its first token was sent (CLOCK_MONOTONIC ns), and its body",
    )
    parser.add_argument("--embeddings", action="store_true", help="llamacpp: serve /v1/embeddings")
    parser.add_argument(
        "--reranking", action="store_true", help="llamacpp: serve /v1/rerank (and embeddings)"
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace, timings: TextIO | None = None) -> None:
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "behaviour": Behaviour(
            ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s, batch=max(1, args.batch)
        ),
    }
    if args.model:
        options["model"] = args.model
    if args.slots is not None and args.kind == "llamacpp":
        options["slots"] = args.slots
    if args.api_key is not None and args.kind == "openai":
        options["api_key"] = args.api_key
    if args.kind == "llamacpp":
        options.update(embeddings=args.embeddings, reranking=args.reranking)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FAKES[args.kind](**options) as fake:
        fake.timings = timings
        print(fake.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    with contextlib.ExitStack() as files:
        # Line-buffered: one short write per finished stream, readable while the fake runs.
        timings = (
            files.enter_context(open(args.timings, "a", encoding="utf-8", buffering=1))
            if args.timings
            else None
        )
        runner(serve(args, timings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
