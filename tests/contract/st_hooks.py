"""Schemathesis hooks for provider verification (loaded through ``SCHEMATHESIS_HOOKS``).

Generated task requests name random engines and models; the server under test serves one mock
model, so nearly every generated task would stop at "no pool serves this model" (a documented
503) and never reach the queue, the stream or cancel. Where a generated body names an engine and a
model as strings, they are pointed at the served pair, and so is the model of an OpenAI completion
request. Likewise a generated catalog ref is almost
always a relative path to nothing (a documented 404); where a generated pull names a ref that is not
remote, it is pointed at a local model file (``LLORCH_ST_MODEL``, with its true digest when one is
given), so that registration, the Location link and the model's own operations are exercised.
Schemathesis revalidates the edited case, so a request that was invalid for another reason stays a
negative case.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import schemathesis

SERVED = {"engine": "mock", "model_ref": "m0"}
OPENAI_COMPLETIONS = ("/v1/chat/completions", "/v1/completions")
#: The environment variable naming a local model file for catalog pulls.
MODEL_FILE_ENV = "LLORCH_ST_MODEL"
#: Refs left as generated: they exercise the outbound policy's documented refusal.
REMOTE_SCHEMES = ("hf:", "http://", "https://", "s3://", "oci://")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if not isinstance(case.body, dict):
        return
    path = case.operation.path
    if path == "/v1/tasks" and all(isinstance(case.body.get(key), str) for key in SERVED):
        case.body.update(SERVED)
    if path in OPENAI_COMPLETIONS and isinstance(case.body.get("model"), str):
        case.body["model"] = SERVED["model_ref"]
    model_file = os.environ.get(MODEL_FILE_ENV)
    ref = case.body.get("ref")
    if path == "/v1/catalog/models" and model_file and isinstance(ref, str) and not _remote(ref):
        case.body["ref"] = f"file:{model_file}"
        if isinstance(case.body.get("digest"), str):
            case.body["digest"] = f"sha256:{_sha256(model_file)}"


def _remote(ref: str) -> bool:
    return ref.startswith(REMOTE_SCHEMES)


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
