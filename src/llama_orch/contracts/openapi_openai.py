"""The OpenAPI document of the OpenAI-compatible routes this server serves.

Only the subset llama-orch implements is described: fields it maps, fields it accepts at their
neutral value only, and the headers it adds (task id, queue position, predicted start).
"""

from __future__ import annotations

from typing import Any

from llama_orch.contracts import api

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}
_STOP = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        {"type": "null"},
    ]
}
_NEUTRAL_ONLY = (
    "Accepted only at its neutral value (n: 1, penalties 0, logprobs off, no tools, text "
    "response_format); any other value is a 400 naming the field. Unknown fields are refused."
)
_SAMPLING: dict[str, Any] = {
    "model": {"type": "string", "description": "A served model (GET /v1/models) or a pool id"},
    # As OpenAI's SDKs send them: an optional field may be null, which means absent.
    "stream": {"type": ["boolean", "null"], "default": False},
    "stream_options": {
        "type": ["object", "null"],
        "properties": {"include_usage": {"type": "boolean"}},
        "description": "Only with stream: true",
    },
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "seed": {"type": ["integer", "null"]},
    "stop": _STOP,
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
    "top_k": {
        "type": ["integer", "null"],
        "minimum": 0,
        "description": "Engine extra (extra_body)",
    },
    "repetition_penalty": {
        "type": ["number", "null"],
        "exclusiveMinimum": 0,
        "description": "Engine extra (extra_body); repeat_penalty is the same setting",
    },
    "repeat_penalty": {
        "type": ["number", "null"],
        "exclusiveMinimum": 0,
        "description": "Engine extra (extra_body); repetition_penalty is the same setting",
    },
    "n": {"anyOf": [{"const": 1}, {"type": "null"}]},
    "user": {
        "type": ["string", "null"],
        "description": "Accepted and ignored: it names no session (X-Session-Id does)",
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
        "content": {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {
                            "type": {"const": "text"},
                            "text": {"type": "string"},
                        },
                    },
                },
                {"type": "null"},
            ]
        },
    },
}
_SCHEMAS: dict[str, Any] = {
    "OpenAIError": _ERROR,
    "Usage": _USAGE,
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "description": _NEUTRAL_ONLY,
        "properties": {
            **_SAMPLING,
            "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
            "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
        },
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "description": _NEUTRAL_ONLY + " max_tokens defaults to 16.",
        "properties": {
            **_SAMPLING,
            "prompt": {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "maxItems": 1},
                ]
            },
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {
                            "type": "object",
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": "string"},
                            },
                        },
                        "finish_reason": {"type": "string", "enum": ["stop", "length"]},
                    },
                },
            },
            "usage": {"$ref": "#/components/schemas/Usage"},
        },
    },
    "Completion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "text_completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "text", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "text": {"type": "string"},
                        "finish_reason": {"type": "string", "enum": ["stop", "length"]},
                    },
                },
            },
            "usage": {"$ref": "#/components/schemas/Usage"},
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
            "pool_id": {"type": "string"},
            "engine": {"type": "string"},
            "max_model_len": {"type": "integer"},
            "ready": {"type": "boolean"},
            "simulated": {"type": "boolean"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
        },
    },
}
_TEXTS = {"type": "array", "minItems": 1, "maxItems": api.MAX_INPUTS, "items": {"type": "string"}}
_TOKEN_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "total_tokens"],
    "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
}
_SCHEMAS.update(
    {
        "EmbeddingRequest": {
            "type": "object",
            "required": ["model", "input"],
            "description": "Empty strings, token-id inputs and unknown fields are refused.",
            "properties": {
                "model": _SAMPLING["model"],
                "input": {"anyOf": [{"type": "string"}, _TEXTS]},
                "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                "dimensions": {"type": "integer", "minimum": 1},
                "user": _SAMPLING["user"],
            },
        },
        "EmbeddingList": {
            "type": "object",
            "required": ["object", "model", "data", "usage"],
            "properties": {
                "object": {"const": "list"},
                "model": {"type": "string"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["object", "index", "embedding"],
                        "properties": {
                            "object": {"const": "embedding"},
                            "index": {"type": "integer"},
                            "embedding": {
                                "anyOf": [
                                    {"type": "array", "items": {"type": "number"}},
                                    {"type": "string", "description": "base64 float32 (LE)"},
                                ]
                            },
                        },
                    },
                },
                "usage": _TOKEN_USAGE,
            },
        },
        "RerankRequest": {
            "type": "object",
            "required": ["model", "query", "documents"],
            "properties": {
                "model": _SAMPLING["model"],
                "query": {"type": "string", "minLength": 1},
                "documents": _TEXTS,
                "top_n": {"type": "integer", "minimum": 0, "description": "0 or absent: all"},
                "return_documents": {"type": "boolean", "default": True},
                "user": _SAMPLING["user"],
            },
        },
        "RerankList": {
            "type": "object",
            "required": ["id", "model", "usage", "results"],
            "properties": {
                "id": {"type": "string"},
                "model": {"type": "string"},
                "usage": _TOKEN_USAGE,
                "results": {
                    "type": "array",
                    "description": "Highest relevance first; index is the document's position",
                    "items": {
                        "type": "object",
                        "required": ["index", "relevance_score"],
                        "properties": {
                            "index": {"type": "integer"},
                            "relevance_score": {"type": "number"},
                            "document": {
                                "type": "object",
                                "properties": {"text": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    }
)
_TASK_HEADERS = {
    "X-Correlation-Id": {"schema": {"type": "string"}},
    "X-Request-Id": {"schema": {"type": "string"}, "description": "The correlation ID"},
    "X-Task-Id": {"schema": {"type": "string", "format": "uuid"}},
    "X-Queue-Position": {"schema": {"type": "integer"}},
    "X-Predicted-Start-Ms": {"schema": {"type": "integer"}},
    "X-Pool-Id": {"schema": {"type": "string"}},
}
_SCHEDULING = [
    {
        "name": "X-Priority",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "enum": ["interactive", "batch"], "default": "interactive"},
    },
    {
        "name": "X-Session-Id",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "format": "uuid"},
        "description": "Default: one session per `user`, else a new session per request",
    },
    {
        "name": "X-Deadline-Ms",
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "default": 600000},
        "description": "Longest the request may wait in the queue",
    },
]
_STREAM_EXAMPLE = (
    ": queue-position 2\n\n"
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,'
    '"model":"m0","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,'
    '"finish_reason":null}]}\n\n'
    "data: [DONE]\n\n"
)


#: One event of a streamed completion (OpenAPI 3.1: an event stream's schema describes each
#: event): unnamed, its data a JSON chunk, and ``[DONE]`` last.
_CHUNK_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"const": "message"},
        "data": {"type": "string", "description": "A JSON chunk, or [DONE] to end the stream"},
    },
}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "headers": headers or {"X-Correlation-Id": {"schema": {"type": "string"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}},
    }


def _completion_route(
    op: str, summary: str, request: str, response: str, *, stream: bool = True
) -> dict[str, Any]:
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}}
    }
    if stream:
        content["text/event-stream"] = {"schema": _CHUNK_EVENT, "example": _STREAM_EXAMPLE}
    return {
        "post": {
            "operationId": op,
            "summary": summary,
            "parameters": _SCHEDULING,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}
                },
            },
            "responses": {
                "200": {
                    "description": "The answer, whole or streamed (stream: true)"
                    if stream
                    else "The answer, once the task ended",
                    "headers": _TASK_HEADERS,
                    "content": content,
                },
                "400": _error("invalid_request_error; param names the field"),
                "401": _error(
                    "authentication_error: a missing or bad bearer token (the client's API key)",
                    {
                        "X-Correlation-Id": {"schema": {"type": "string"}},
                        "WWW-Authenticate": {"schema": {"type": "string"}},
                    },
                ),
                "404": _error("Unknown model (code model_not_found)"),
                "413": _error(
                    "invalid_request_error: a body past what server.max_prompt_bytes allows"
                ),
                "429": _error(
                    "rate_limit_error: a full queue or a rate limit",
                    {
                        "Retry-After": {"schema": {"type": "integer"}},
                        "retry-after-ms": {"schema": {"type": "integer"}},
                        "x-should-retry": {
                            "schema": {"type": "string"},
                            "description": "false when a spent session budget refused it",
                        },
                    },
                ),
                "499": _error("The task was canceled (POST /v1/tasks/{id}/cancel)"),
                "503": _error("No ready pool can take the request (server_error)"),
            },
        }
    }


def openai_document() -> dict[str, Any]:
    paths = {
        "/v1/chat/completions": _completion_route(
            "createChatCompletion",
            "A chat answer, admitted as a task",
            "ChatCompletionRequest",
            "ChatCompletion",
        ),
        "/v1/completions": _completion_route(
            "createCompletion",
            "A legacy completion, admitted as a task",
            "CompletionRequest",
            "Completion",
        ),
        "/v1/embeddings": _completion_route(
            "createEmbedding",
            "Embeddings of one text or a list, admitted as an embedding task",
            "EmbeddingRequest",
            "EmbeddingList",
            stream=False,
        ),
        "/v1/rerank": _completion_route(
            "createRerank",
            "Documents ranked against a query (Jina/Cohere shape), admitted as a rerank task",
            "RerankRequest",
            "RerankList",
            stream=False,
        ),
        # Jina- and Cohere-style clients post to the bare path.
        "/rerank": _completion_route(
            "createRerankUnversioned",
            "The same as POST /v1/rerank, at the path Jina- and Cohere-style clients use",
            "RerankRequest",
            "RerankList",
            stream=False,
        ),
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "responses": {
                    "200": {
                        "description": "Each pool's model",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ModelList"}
                            }
                        },
                    }
                },
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "operationId": "retrieveModel",
                "parameters": [
                    {
                        "name": "model_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "One served model",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Model"}}
                        },
                    },
                    "404": _error("Unknown model (code model_not_found)"),
                    "413": _error(
                        "invalid_request_error: a body past what server.max_prompt_bytes allows"
                    ),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llama-orch OpenAI-compatible API",
            "version": api.API_VERSION,
            "description": "The OpenAI routes llama-orch serves, through its queues",
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }
