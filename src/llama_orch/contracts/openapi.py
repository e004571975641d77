"""The OpenAPI documents of both planes, built from the API models (deterministically).

``llorch contracts write`` writes them to ``contracts/openapi/``; a test fails when the
committed files differ from what this module builds, and the server serves the same text.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from llama_orch.contracts import api, console, events
from llama_orch.contracts.openapi_openai import openai_document

_UUID_PARAM = {"in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
_PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": (
        "wait: answer 200 with the task's outcome once it ended (embedding vectors, rerank "
        "scores, a completion's text) instead of 202 at once; a disconnect cancels the task."
    ),
}
_CORRELATION = {
    "name": "X-Correlation-Id",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": (
        "Echoed on every response when it is 1-128 characters of A-Z a-z 0-9 . _ : -; "
        "a value that is absent, longer or carries other characters is replaced by a fresh "
        "UUIDv4, which is echoed instead (the request itself is served)."
    ),
}
_CID_HEADER = {"X-Correlation-Id": {"schema": {"type": "string"}}}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A model of optional query parameters as OpenAPI parameters (bounds from the model)."""
    parameters = []
    for name, prop in model.model_json_schema()["properties"].items():
        schema = next(s for s in prop["anyOf"] if s.get("type") != "null")
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": schema,
                "description": prop["description"],
            }
        )
    return parameters


_TASK_EXAMPLE = {
    "task_id": "11111111-1111-4111-8111-111111111111",
    "session_id": "22222222-2222-4222-8222-222222222222",
    "workload": "completion",
    "model_ref": "llama-3.1-8b-instruct-q4",
    "engine": "mock",
    "ctx": 4096,
    "priority": "interactive",
    "max_tokens": 64,
    "deadline_ms": 30000,
    "seed": 42,
    "prompt": "Write a haiku about GPUs.",
    "placement": {"mode": "auto", "allow_fallback": True},
}
_PINNED_EXAMPLE = {
    **_TASK_EXAMPLE,
    "task_id": "33333333-3333-4333-8333-333333333333",
    "placement": {"mode": "pin", "pin_pool_id": "gpu0-8b"},
}
_PREFER_EXAMPLE = {
    **_TASK_EXAMPLE,
    "task_id": "44444444-4444-4444-8444-444444444444",
    "priority": "batch",
    "placement": {
        "mode": "prefer",
        "prefer_pools": ["gpu0-8b"],
        "avoid_pools": ["gpu1-3b"],
        "allow_fallback": True,
    },
}
_BUDGET_HEADERS = {
    "X-Budget-Tokens-Remaining": {
        "schema": {"type": "integer"},
        "description": "Session tokens left after reserving this task's max_tokens",
    },
    "X-Budget-Time-Remaining-Ms": {
        "schema": {"type": "integer"},
        "description": "Session decode time left, in milliseconds",
    },
    "X-Budget-Cost-Remaining": {
        "schema": {"type": "number"},
        "description": "Session cost left, in the units of budgets.cost",
    },
}
_SSE_EXAMPLE = (
    'event: started\ndata: {"queue_position":0,"predicted_start_ms":0}\n\n'
    'event: token\ndata: {"t":"quiet","i":0}\n\n'
    'event: metrics\ndata: {"queue_depth":0,"on_time_probability":1.0,"kv_warmth":false}\n\n'
    'event: token\ndata: {"t":" river","i":1}\n\n'
    'event: end\ndata: {"tokens_out":2,"decode_time_ms":40,"decode_ms":40}\n\n'
)


#: One SSE event as a client's parser reads it; ``data`` is one line of JSON whose schema the
#: event names (``x-sse-events``).
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": list(events.PAYLOADS)},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


def _error(description: str, example: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json("ErrorEnvelope", description, example)


def _json(ref: str, description: str, example: Any = None) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{ref}"}}
    if example is not None:
        content["example"] = example
    return {
        "description": description,
        "headers": _CID_HEADER,
        "content": {"application/json": content},
    }


#: Models clients send: documented as accepted (validation), the rest as sent (serialization).
_REQUESTS: tuple[type[BaseModel], ...] = (api.TaskRequest, api.Artifact)


def _schemas(models: list[type[BaseModel]]) -> dict[str, Any]:
    _, top = models_json_schema(
        [(m, "validation" if m in _REQUESTS else "serialization") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    return dict(sorted(top.get("$defs", {}).items()))


def _doc(
    title: str, description: str, paths: dict[str, Any], models: list[type[BaseModel]]
) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": api.API_VERSION, "description": description},
        "components": {
            "schemas": _schemas(models),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }


def data_plane() -> dict[str, Any]:
    paths = {
        "/v1/tasks": {
            "post": {
                "operationId": "createTask",
                "summary": "Admit a task into its pool's queue",
                "parameters": [_CORRELATION, _PREFER],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/TaskRequest"},
                            "example": _TASK_EXAMPLE,
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "With Accept: text/event-stream, the task's SSE stream in "
                        "the same response (started carries the 202 fields); with Prefer: wait, "
                        "the task's outcome once it ended (a failed task answers its error)",
                        "headers": {
                            **_CID_HEADER,
                            "X-Task-Id": {"schema": {"type": "string", "format": "uuid"}},
                            "X-Queue-Position": {"schema": {"type": "integer"}},
                            "X-Predicted-Start-Ms": {"schema": {"type": "integer"}},
                        },
                        "content": {
                            "text/event-stream": {
                                "schema": _SSE_EVENT,
                                "example": _SSE_EXAMPLE,
                            },
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/TaskOutcome"}
                            },
                        },
                    },
                    "202": {
                        **_json(
                            "AdmissionResponse",
                            "Admitted",
                            {
                                "task_id": _TASK_EXAMPLE["task_id"],
                                "queue_position": 0,
                                "predicted_start_ms": 0,
                                "backoff_ms": 0,
                                "pool_id": "gpu0-8b",
                            },
                        ),
                        "headers": {**_CID_HEADER, **_BUDGET_HEADERS},
                    },
                    "400": _error(
                        "Invalid request (INVALID_PARAMS, DEADLINE_UNMET), including placement "
                        "overrides naming unknown pools or sent while the server disables them"
                    ),
                    "401": _error("MISSING_TOKEN or BAD_TOKEN"),
                    "403": _error("NON_LOOPBACK_WITHOUT_TOKEN"),
                    "409": _error("CONFLICT: task_id already submitted"),
                    "413": _error(
                        "The body is past what server.max_prompt_bytes allows (INVALID_PARAMS)"
                    ),
                    "429": {
                        **_error(
                            "Backpressure (ADMISSION_REJECT, QUEUE_FULL_DROP_LRU): a full queue, "
                            "a class rate limit (policy_label rate-limit), or a session turn or "
                            "budget refusal (policy_label session-budget, retriable false)",
                            {
                                "code": "QUEUE_FULL_DROP_LRU",
                                "message": "pool gpu0-8b queue is full",
                                "engine": "mock",
                                "retriable": True,
                                "retry_after_ms": 1500,
                                "policy_label": "drop-lru",
                            },
                        ),
                        "headers": {
                            **_CID_HEADER,
                            "Retry-After": {"schema": {"type": "integer"}},
                            "X-Backoff-Ms": {"schema": {"type": "integer"}},
                        },
                    },
                    "500": _error(
                        "With Prefer: wait, a task that failed after admission (INTERNAL)"
                    ),
                    "503": _error(
                        "POOL_UNREADY or POOL_UNAVAILABLE; the message names the placement "
                        "outcome (e.g. pinned_pool_infeasible, no_preferred_feasible); with "
                        "Prefer: wait, also a task that failed after admission (WORKER_RESET, "
                        "DECODE_TIMEOUT, POOL_UNAVAILABLE)"
                    ),
                },
                "x-examples": {
                    "interactive-completion": {"request": _TASK_EXAMPLE, "response_status": 202},
                    "pinned-to-a-pool": {"request": _PINNED_EXAMPLE, "response_status": 202},
                    "prefer-with-fallback": {"request": _PREFER_EXAMPLE, "response_status": 202},
                },
            }
        },
        "/v1/tasks/{task_id}/stream": {
            "get": {
                "operationId": "streamTask",
                "summary": "Stream a task: started, token*, metrics*, then end or error",
                "parameters": [
                    {"name": "task_id", **_UUID_PARAM},
                    _CORRELATION,
                    *_query_parameters(api.StreamOptions),
                ],
                "responses": {
                    "200": {
                        "description": "SSE stream",
                        "headers": _CID_HEADER,
                        "content": {
                            "text/event-stream": {
                                "schema": _SSE_EVENT,
                                "example": _SSE_EXAMPLE,
                            }
                        },
                    },
                    "400": _error("task_id is not a UUID, or a stream query parameter is invalid"),
                    "404": _error("Unknown task or expired transcript"),
                    "409": _error("The task already has a live subscriber"),
                },
                "x-examples": {"stream": {"response_status": 200, "body": _SSE_EXAMPLE}},
                "x-sse-events": {
                    name: {"$ref": f"#/components/schemas/{model.__name__}"}
                    for name, model in events.PAYLOADS.items()
                },
            }
        },
        "/v1/tasks/{task_id}/cancel": {
            "post": {
                "operationId": "cancelTask",
                "summary": "Cancel a task; idempotent, no token follows the acknowledgement",
                "parameters": [{"name": "task_id", **_UUID_PARAM}, _CORRELATION],
                "responses": {
                    "204": {
                        "description": "Canceled (or already finished)",
                        "headers": _CID_HEADER,
                    },
                    "400": _error("task_id is not a UUID"),
                    "404": _error("Unknown task"),
                },
                "x-examples": {"cancel": {"response_status": 204}},
            }
        },
        "/v1/sessions/{session_id}": {
            "get": {
                "operationId": "getSession",
                "parameters": [{"name": "session_id", **_UUID_PARAM}, _CORRELATION],
                "responses": {
                    "200": _json(
                        "SessionInfo",
                        "Session",
                        {
                            "ttl_ms_remaining": 598000,
                            "turns": 1,
                            "kv_bytes": 0,
                            "kv_warmth": True,
                            "tokens_budget_remaining": 3936,
                            "cost_budget_remaining": 0.96,
                        },
                    ),
                    "400": _error("session_id is not a UUID"),
                    "404": _error("Unknown or expired session"),
                },
                "x-examples": {"session": {"response_status": 200}},
            },
            "delete": {
                "operationId": "deleteSession",
                "parameters": [{"name": "session_id", **_UUID_PARAM}, _CORRELATION],
                "responses": {
                    "204": {
                        "description": "Session and its KV warmth forgotten",
                        "headers": _CID_HEADER,
                    },
                    "400": _error("session_id is not a UUID"),
                },
                "x-examples": {"evict": {"response_status": 204}},
            },
        },
    }
    models: list[type[BaseModel]] = [
        api.TaskRequest,
        api.AdmissionResponse,
        api.TaskOutcome,
        api.SessionInfo,
        api.ErrorEnvelope,
        *events.PAYLOADS.values(),
    ]
    return _doc("OrchQueue v1", "llama-orch data plane", paths, models)


_ARTIFACT_EXAMPLE = {
    "kind": "plan",
    "tags": ["project:demo", "step:1"],
    "content": {"steps": ["read the spec", "write the tests"]},
    "metadata": {"author": "agent-7"},
}
_ARTIFACT_REF_EXAMPLE = {
    "id": "9f2c6d4e0b1a7c3e5d8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d",
    "kind": "plan",
    "digest": "sha256:9f2c6d4e0b1a7c3e5d8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d",
    "created_ms": 1767225600000,
    "tags": ["project:demo", "step:1"],
}
_ARTIFACT_ID_PARAM = {
    "name": "artifact_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "description": "Lowercase hex SHA-256 of the artifact's canonical JSON",
}


def _artifact_paths() -> dict[str, Any]:
    listing = [
        {
            "name": "tag",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "maxLength": 128, "pattern": api.TAG_PATTERN},
            "description": "Only artifacts carrying this tag (e.g. task:<id>, session:<id>, sse)",
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
        },
        {
            "name": "after",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "description": "The `next` of the previous page; pages run in creation order",
        },
    ]
    return {
        "/v1/artifacts": {
            "post": {
                "operationId": "createArtifact",
                "summary": "Store a document; its id is the SHA-256 of its canonical JSON",
                "description": (
                    "Canonical JSON: sorted keys, no whitespace. Storing the same document "
                    "again answers 200 with the same id and creation time."
                ),
                "parameters": [_CORRELATION],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/Artifact"},
                            "example": _ARTIFACT_EXAMPLE,
                        }
                    },
                },
                "responses": {
                    "201": _json("ArtifactRef", "Stored", _ARTIFACT_REF_EXAMPLE),
                    "200": _json("ArtifactRef", "Already stored (identical document)"),
                    "400": _error("Invalid document, kind or tag (INVALID_PARAMS)"),
                    "413": _error("Over server.artifact_max_bytes (INVALID_PARAMS)"),
                },
            },
            "get": {
                "operationId": "listArtifacts",
                "summary": "List artifact refs, optionally by tag, a page at a time",
                "parameters": [*listing, _CORRELATION],
                "responses": {
                    "200": _json(
                        "ArtifactPage", "One page", {"items": [_ARTIFACT_REF_EXAMPLE], "next": None}
                    ),
                    "400": _error("Malformed tag, limit or cursor"),
                    "404": _error("The cursor names an unknown or pruned artifact"),
                },
            },
        },
        "/v1/artifacts/{artifact_id}": {
            "get": {
                "operationId": "getArtifact",
                "parameters": [_ARTIFACT_ID_PARAM, _CORRELATION],
                "responses": {
                    "200": _json(
                        "StoredArtifact",
                        "The ref and the document",
                        {**_ARTIFACT_REF_EXAMPLE, **_ARTIFACT_EXAMPLE},
                    ),
                    "400": _error("The id is not 64 lowercase hex characters"),
                    "404": _error("Unknown artifact, or a trace past its retention"),
                },
            }
        },
    }


def _pool_operation(
    operation_id: str, request: str, example: dict[str, Any], accepted: str, answer: Any
) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation_id,
            "parameters": [
                {"name": "pool_id", "in": "path", "required": True, "schema": {"type": "string"}},
                _CORRELATION,
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{request}"},
                        "example": example,
                    }
                },
            },
            "responses": {
                "202": {
                    "description": accepted,
                    "headers": _CID_HEADER,
                    "content": {
                        "application/json": {"schema": {"type": "object"}, "example": answer}
                    },
                },
                "400": _error(
                    "INVALID_PARAMS: a bad body; reload: the pool's engine is not one llama-orch "
                    "launches, or the new model is not present"
                ),
                "404": _error("Unknown pool"),
                "409": _error("CONFLICT: a drain or reload of this pool is already running"),
                "413": _error("The body is past 64 KiB (INVALID_PARAMS)"),
            },
            "x-examples": {
                operation_id: {"request": example, "response_status": 202},
            },
        }
    }


def control_plane() -> dict[str, Any]:
    paths = {
        "/v1/capabilities": {
            "get": {
                "operationId": "getCapabilities",
                "parameters": [_CORRELATION],
                "responses": {"200": _json("Capabilities", "Engines and pools")},
                "x-examples": {"capabilities": {"response_status": 200}},
            }
        },
        "/v1/pools/{pool_id}/health": {
            "get": {
                "operationId": "getPoolHealth",
                "parameters": [
                    {
                        "name": "pool_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    _CORRELATION,
                ],
                "responses": {
                    "200": _json("PoolHealth", "Liveness, readiness, gates"),
                    "404": _error("Unknown pool"),
                },
            }
        },
        "/v1/pools/{pool_id}/drain": _pool_operation(
            "drainPool",
            "DrainRequest",
            {"deadline_ms": 30000},
            "Draining: new tasks are refused with a retriable POOL_UNREADY at once, queued tasks "
            "end with a retriable POOL_UNAVAILABLE, in-flight tasks run until the deadline",
            {
                "pool_id": "gpu0",
                "draining": True,
                "kind": "drain",
                "state": "running",
                "deadline_ms": 30000,
                "queued_ended": 2,
            },
        ),
        "/v1/pools/{pool_id}/reload": _pool_operation(
            "reloadPool",
            "ReloadRequest",
            {"new_model_ref": "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"},
            "Reloading: new replicas start with the new model; once all are Ready placement "
            "switches to them and the old ones drain. A failure rolls back, the old replicas "
            "keep serving; GET /v1/pools/{pool_id}/health shows the outcome (last_operation). "
            "A pool whose engine llama-orch does not launch (external, mock) keeps its model: "
            "its reload probes the engine again and ends a drain once every replica passes its "
            "gates (another model is a 400)",
            {
                "pool_id": "gpu0",
                "kind": "reload",
                "state": "running",
                "from_model": "/models/old.gguf",
                "to_model": "/models/new.gguf",
            },
        ),
        "/metrics": {
            "get": {
                "operationId": "getMetrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi/{plane}.yaml": {
            "get": {
                "operationId": "getOpenApi",
                "parameters": [
                    {
                        "name": "plane",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(PLANES)},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "This document or its sibling (an OpenAPI 3.1 object)",
                        "content": {
                            "application/yaml": {
                                "schema": {"type": "object", "required": ["openapi", "paths"]}
                            }
                        },
                    },
                    "404": _error("No such document; the plane is data or control"),
                },
            }
        },
    }
    from llama_orch.contracts import openapi_catalog

    paths.update(openapi_catalog.catalog_paths())
    paths.update(console.openapi_paths())
    paths.update(_artifact_paths())
    models: list[type[BaseModel]] = [
        api.Capabilities,
        api.PoolHealth,
        api.DrainRequest,
        api.ReloadRequest,
        api.ErrorEnvelope,
        *openapi_catalog.MODELS,
        api.Artifact,
        api.ArtifactRef,
        api.StoredArtifact,
        api.ArtifactPage,
        console.Status,
        *console.EVENT_MODELS,
    ]
    return _doc(
        "llama-orch control plane",
        "Capabilities, pool health, drain and reload, metrics, catalog, artifacts, console status",
        paths,
        models,
    )


PLANES = ("data", "control", "openai")


def render_openapi(plane: str) -> str:
    builders = {"data": data_plane, "control": control_plane, "openai": openai_document}
    document = builders[plane]()
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
