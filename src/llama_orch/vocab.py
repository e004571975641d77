"""Enumerations shared by the wire contracts, the config and the core.

Values are part of API 1.x: adding one is fine, renaming or removing one is a breaking change.
"""

from __future__ import annotations

from enum import StrEnum


class Engine(StrEnum):
    LLAMACPP = "llamacpp"
    VLLM = "vllm"
    TGI = "tgi"
    TRITON = "triton"
    OPENAI = "openai"
    # Simulation scaffolding for demos and tests; never inference.
    MOCK = "mock"


#: Engines whose replicas llama-orch expects on NVIDIA GPUs it can see.
GPU_ENGINES = frozenset({Engine.LLAMACPP, Engine.VLLM, Engine.TGI, Engine.TRITON})


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class Workload(StrEnum):
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    RERANK = "rerank"


class DeterminismLevel(StrEnum):
    STRICT = "strict"
    BEST_EFFORT = "best_effort"


class KVHint(StrEnum):
    REUSE = "reuse"
    COLD = "cold"


class PlacementMode(StrEnum):
    PIN = "pin"
    PREFER = "prefer"
    AUTO = "auto"


class FullPolicy(StrEnum):
    REJECT = "reject"
    DROP_LRU = "drop-lru"


class ProvisioningMode(StrEnum):
    EXTERNAL = "external"
    SOURCE = "source"
    CONTAINER = "container"
    PACKAGE = "package"
    BINARY = "binary"
