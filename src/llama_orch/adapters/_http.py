"""The shared HTTP util every engine adapter builds on (SPEC §7.3, D-HTTP-01..03), by concern:

- ``_clients``: ``build_client``, ``build_session``, ``build_upstream`` and ``UpstreamClients``
  (keep-alive connections to one upstream, probes apart from token streams);
- ``_retry``: ``RetryPolicy`` and ``with_retries`` for idempotent calls only;
- ``_errors``: ``map_transport_errors``, ``error_for_status``, ``retry_after_ms``, ``redact_url``.

This module names them all in one place for the adapters.
"""

from llama_orch.adapters._clients import (
    KEEPALIVE_EXPIRY_S,
    PROBE_CONNECTIONS,
    PendingStream,
    UpstreamClients,
    UpstreamResponse,
    build_client,
    build_session,
    build_upstream,
)
from llama_orch.adapters._errors import (
    error_for_status,
    map_transport_errors,
    redact_url,
    retry_after_ms,
)
from llama_orch.adapters._retry import RETRIABLE, RetryHook, RetryPolicy, with_retries

__all__ = [
    "KEEPALIVE_EXPIRY_S",
    "PROBE_CONNECTIONS",
    "RETRIABLE",
    "PendingStream",
    "RetryHook",
    "RetryPolicy",
    "UpstreamClients",
    "UpstreamResponse",
    "build_client",
    "build_session",
    "build_upstream",
    "error_for_status",
    "map_transport_errors",
    "redact_url",
    "retry_after_ms",
    "with_retries",
]
