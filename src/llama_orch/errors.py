"""The one error tree of llama-orch.

Domain code raises these; only ``server/errors.py`` turns them into HTTP statuses, and only the
stream emitter turns them into SSE ``error`` frames. Nothing here knows about HTTP.

OrchError
├── InvalidParams (ValueError)              INVALID_PARAMS
│   ├── InvalidModelRef                     INVALID_PARAMS (names the accepted ref forms)
│   ├── OutboundDenied (PermissionError)    INVALID_PARAMS (names the host and the policy key)
│   ├── DigestMismatch                      INVALID_PARAMS (expected vs actual digest)
│   └── PayloadTooLarge                     INVALID_PARAMS, answered 413
├── UntrustedArtifact                       UNTRUSTED_ARTIFACT
├── DeadlineUnmet                           DEADLINE_UNMET
├── ModelDeprecated                         MODEL_DEPRECATED
├── NotFound (LookupError)                  NOT_FOUND
├── Conflict                                CONFLICT
├── AdmissionRejected                       ADMISSION_REJECT
│   └── QueueFullDropLru                    QUEUE_FULL_DROP_LRU
├── PoolUnready                             POOL_UNREADY
├── PoolUnavailable                         POOL_UNAVAILABLE
├── AuthError
│   ├── MissingToken                        MISSING_TOKEN (40101)
│   ├── BadToken                            BAD_TOKEN (40102)
│   └── NonLoopbackWithoutToken             NON_LOOPBACK_WITHOUT_TOKEN (40301)
├── WorkerError                             what an engine adapter raises
│   ├── DecodeTimeout (TimeoutError)        DECODE_TIMEOUT
│   ├── WorkerReset (ConnectionError)       WORKER_RESET
│   ├── WorkerUnavailable                   POOL_UNAVAILABLE
│   │   └── EngineUnreachable               POOL_UNAVAILABLE (the connection was refused)
│   ├── WorkerInvalidParams                 INVALID_PARAMS (the engine refused the request)
│   └── WorkerInternal                      INTERNAL
├── CatalogError                            the model/engine catalog on disk
│   ├── IndexVersionError                   INTERNAL (an index written by another version)
│   ├── IndexCorrupt                        INTERNAL (an index file that does not parse)
│   └── FetchFailed                         INTERNAL, retriable (a source could not be read)
│       └── InsufficientSpace (OSError)     INTERNAL (the disk cannot hold the download)
├── StorageUnwritable                       INTERNAL (the disk refuses a write: read-only, full)
└── InternalError                           INTERNAL

ConfigError (ValueError) is separate: it is raised before the server exists and carries every
problem found in a config file, each with the path of the offending key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar


class ErrorKind(StrEnum):
    INVALID_PARAMS = "INVALID_PARAMS"
    DEADLINE_UNMET = "DEADLINE_UNMET"
    MODEL_DEPRECATED = "MODEL_DEPRECATED"
    UNTRUSTED_ARTIFACT = "UNTRUSTED_ARTIFACT"
    MISSING_TOKEN = "MISSING_TOKEN"
    BAD_TOKEN = "BAD_TOKEN"
    NON_LOOPBACK_WITHOUT_TOKEN = "NON_LOOPBACK_WITHOUT_TOKEN"
    ADMISSION_REJECT = "ADMISSION_REJECT"
    QUEUE_FULL_DROP_LRU = "QUEUE_FULL_DROP_LRU"
    POOL_UNREADY = "POOL_UNREADY"
    POOL_UNAVAILABLE = "POOL_UNAVAILABLE"
    DECODE_TIMEOUT = "DECODE_TIMEOUT"
    WORKER_RESET = "WORKER_RESET"
    INTERNAL = "INTERNAL"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"


class OrchError(Exception):
    """Base of every error llama-orch reports to a client.

    ``retriable`` and ``retry_after_ms`` are advice for the client; ``hint`` says what to do.
    """

    kind: ClassVar[ErrorKind] = ErrorKind.INTERNAL
    retriable_default: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        retriable: bool | None = None,
        retry_after_ms: int | None = None,
        hint: str | None = None,
        pool_id: str | None = None,
        engine: str | None = None,
        policy_label: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retriable = self.retriable_default if retriable is None else retriable
        self.retry_after_ms = retry_after_ms
        self.hint = hint
        self.pool_id = pool_id
        self.engine = engine
        self.policy_label = policy_label

    def envelope(self) -> dict[str, Any]:
        """The typed error envelope (SPEC §6.2), without keys that do not apply."""
        body: dict[str, Any] = {"code": self.kind.value, "message": self.message}
        optional = {
            "engine": self.engine,
            "pool_id": self.pool_id,
            "retriable": self.retriable,
            "retry_after_ms": self.retry_after_ms,
            "policy_label": self.policy_label,
            "hint": self.hint,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body


class InvalidParams(OrchError, ValueError):
    kind = ErrorKind.INVALID_PARAMS


class InvalidModelRef(InvalidParams):
    """A model reference in none of the accepted forms."""


class OutboundDenied(InvalidParams, PermissionError):
    """network_policy forbids reaching a host or scheme."""


class DigestMismatch(InvalidParams):
    """Downloaded or local bytes do not hash to the digest that was asked for."""


class UntrustedArtifact(OrchError):
    kind = ErrorKind.UNTRUSTED_ARTIFACT


class CatalogError(OrchError):
    """The model or engine catalog on disk cannot do what was asked."""


class IndexVersionError(CatalogError):
    """An index file carries a schema version this build cannot read."""


class IndexCorrupt(CatalogError):
    """An index file on disk is not a valid index (cut short, overwritten, edited by hand)."""


class FetchFailed(CatalogError):
    """A model source could not be read; the pull may be retried (downloads resume)."""

    retriable_default = True


class InsufficientSpace(FetchFailed, OSError):
    """The catalog's filesystem cannot hold the download."""

    retriable_default = False


class StorageUnwritable(OrchError):
    """A directory the server stores into (the catalog, artifacts) refuses a write."""


class PayloadTooLarge(InvalidParams):
    """A request body over a documented size limit (HTTP 413; the code stays INVALID_PARAMS)."""


class DeadlineUnmet(OrchError):
    kind = ErrorKind.DEADLINE_UNMET


class ServerStopping(OrchError):
    """Work cut short because the server is stopping (SIGTERM); retry once it is back."""

    kind = ErrorKind.POOL_UNAVAILABLE
    retriable_default = True


class ModelDeprecated(OrchError):
    kind = ErrorKind.MODEL_DEPRECATED


class NotFound(OrchError, LookupError):
    kind = ErrorKind.NOT_FOUND


class Conflict(OrchError):
    kind = ErrorKind.CONFLICT


class AdmissionRejected(OrchError):
    kind = ErrorKind.ADMISSION_REJECT
    retriable_default = True


class QueueFullDropLru(AdmissionRejected):
    kind = ErrorKind.QUEUE_FULL_DROP_LRU


class PoolUnready(OrchError):
    kind = ErrorKind.POOL_UNREADY
    retriable_default = True


class PoolUnavailable(OrchError):
    kind = ErrorKind.POOL_UNAVAILABLE
    retriable_default = True


class AuthError(OrchError):
    """Authentication refusals; ``code_id`` is the numeric code of SPEC §13."""

    code_id: ClassVar[int] = 0

    def envelope(self) -> dict[str, Any]:
        body = super().envelope()
        body["code_id"] = self.code_id
        return body


class MissingToken(AuthError):
    kind = ErrorKind.MISSING_TOKEN
    code_id = 40101


class BadToken(AuthError):
    kind = ErrorKind.BAD_TOKEN
    code_id = 40102


class NonLoopbackWithoutToken(AuthError):
    kind = ErrorKind.NON_LOOPBACK_WITHOUT_TOKEN
    code_id = 40301


class WorkerError(OrchError):
    """An engine failed to serve a request; adapters raise only these."""


class DecodeTimeout(WorkerError, TimeoutError):
    kind = ErrorKind.DECODE_TIMEOUT
    retriable_default = True


class WorkerReset(WorkerError, ConnectionError):
    kind = ErrorKind.WORKER_RESET
    retriable_default = True


class WorkerUnavailable(WorkerError):
    kind = ErrorKind.POOL_UNAVAILABLE
    retriable_default = True


class EngineUnreachable(WorkerUnavailable):
    """The engine refused the connection: nothing was sent, and the engine is likely down."""


class WorkerInvalidParams(WorkerError):
    kind = ErrorKind.INVALID_PARAMS


class WorkerInternal(WorkerError):
    kind = ErrorKind.INTERNAL


class InternalError(OrchError):
    kind = ErrorKind.INTERNAL


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file: where it is, and what is wrong or allowed."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(ValueError):
    """A config file or environment that cannot be served; lists every problem found."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        lines = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"invalid configuration in {source}:\n{lines}")
