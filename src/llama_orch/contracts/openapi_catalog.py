"""The catalog's part of the control-plane OpenAPI document (``/v1/catalog/models``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from llama_orch.contracts import catalog
from llama_orch.contracts.openapi import _CID_HEADER, _CORRELATION, _error, _json

MODELS: list[type[BaseModel]] = [
    catalog.PullRequest,
    catalog.CatalogModel,
    catalog.CatalogModelList,
    catalog.StateRequest,
    catalog.Accepted,
]

_ID = {
    "name": "model_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The catalog id (the normalized ref, e.g. hf:org/repo/file.gguf); its '/' "
    "stay as they are.",
}

_GGUF_ID = "hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
_MODEL_EXAMPLE = {
    "id": _GGUF_ID,
    "digest": "sha256:" + "9fecc3b3cd76bba89d504f29b616eedf7da85b96540e490ca5824d3f7d2776a0",
    "source_url": _GGUF_ID,
    "state": "Active",
    "local_path": "/home/me/.cache/llama-orch/catalog/models/hf_TheBloke_..-1a2b3c4d5e6f/"
    "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
    "size_bytes": 668788096,
    "verification": "pass",
    "last_verified_ms": 1767225600000,
    "source": {"repo": "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF", "revision": "main"},
    "gguf": {"architecture": "llama", "context_length": 2048, "file_type": "MOSTLY_Q4_K_M"},
}
_PULLING_EXAMPLE = {
    "id": "s3://models/llama-3-8b.Q4_K_M.gguf",
    "state": "Pulling",
    "pull": {
        "state": "running",
        "bytes_done": 1073741824,
        "bytes_total": 4920734720,
        "rate_bytes_per_s": 104857600.0,
        "eta_s": 36.7,
        "elapsed_s": 10.2,
    },
}
_POLICY_ERROR = {
    "code": "INVALID_PARAMS",
    "message": "fetching from huggingface.co (https) needs outbound network access, which "
    "network_policy.allow_outbound forbids",
    "retriable": False,
    "hint": "set network_policy.allow_outbound: true ...",
}


def catalog_paths() -> dict[str, Any]:
    return {
        "/v1/catalog/models": {
            "post": {
                "operationId": "pullCatalogModel",
                "parameters": [_CORRELATION],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/PullRequest"},
                            "example": {"ref": _GGUF_ID},
                        }
                    },
                },
                "responses": {
                    "201": _json("CatalogModel", "A local file registered (or already present)"),
                    "202": _json(
                        "Accepted",
                        "The pull started; follow Location for progress",
                        {"status": "started", "id": _GGUF_ID, "location": "/v1/catalog/models/…"},
                    ),
                    "400": _error(
                        "Bad ref, policy refusal, digest mismatch, a local path that is not a "
                        "readable model file or directory (INVALID_PARAMS), or UNTRUSTED_ARTIFACT",
                        _POLICY_ERROR,
                    ),
                    "404": _error("A local ref whose path does not exist"),
                    "409": _error(
                        "The model is already being pulled with another digest (or none)"
                    ),
                    "413": _error("The body is past 64 KiB (INVALID_PARAMS)"),
                },
            },
            "get": {
                "operationId": "listCatalogModels",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "next_cursor of the previous page",
                    },
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    _CORRELATION,
                ],
                "responses": {
                    "200": _json(
                        "CatalogModelList", "A page of models, by id", {"models": [_MODEL_EXAMPLE]}
                    ),
                    "304": {"description": "Unchanged since the ETag sent in If-None-Match"},
                    "400": _error("Bad limit or cursor"),
                },
            },
        },
        "/v1/catalog/models/{model_id}": {
            "get": {
                "operationId": "getCatalogModel",
                "parameters": [_ID, _CORRELATION],
                "responses": {
                    "200": _json("CatalogModel", "The model, with pull progress", _PULLING_EXAMPLE),
                    "404": _error("Not in the catalog and not being pulled"),
                },
            },
            "delete": {
                "operationId": "deleteCatalogModel",
                "parameters": [_ID, _CORRELATION],
                "responses": {
                    "204": {
                        "description": "Entry and owned artifacts removed",
                        "headers": _CID_HEADER,
                    },
                    "404": _error("Not in the catalog"),
                    "409": _error(
                        "A pool serves the model (reload it to another model first), or the "
                        "model is being pulled (wait for the pull to end)"
                    ),
                },
            },
        },
        "/v1/catalog/models/{model_id}/verify": {
            "post": {
                "operationId": "verifyCatalogModel",
                "parameters": [_ID, _CORRELATION],
                "responses": {
                    "202": _json("Accepted", "Re-hashing started", {"status": "started"}),
                    "404": _error("Not in the catalog"),
                },
            }
        },
        "/v1/catalog/models/{model_id}/state": {
            "post": {
                "operationId": "setCatalogModelState",
                "parameters": [_ID, _CORRELATION],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/StateRequest"},
                            "example": {"state": "Retired"},
                        }
                    },
                },
                "responses": {
                    "202": _json("Accepted", "State changed", {"status": "accepted"}),
                    "400": _error("Unknown state"),
                    "404": _error("Not in the catalog"),
                },
            }
        },
    }
