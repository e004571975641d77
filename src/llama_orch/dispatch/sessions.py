"""Sessions: short-lived groups of tasks with a TTL, a turn count and KV warmth (SPEC §6.5).

A task with an unknown ``session_id`` creates the session; each admitted task is one turn; an
expired session is pruned lazily on access (D-SES-01). Time is passed in, never read here.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_orch.config import SessionsConfig


@dataclass(slots=True)
class Session:
    id: str
    created_at: float
    last_used_at: float
    turns: int = 0
    tokens_used: int = 0
    time_used_ms: int = 0
    cost_used: float = 0.0
    kv_warmth: bool = False
    kv_bytes: int = 0
    #: The replica that last served the session successfully: (pool_id, replica_id).
    last_replica: tuple[str, str] | None = None


class SessionStore:
    def __init__(self, config: SessionsConfig) -> None:
        self._config = config
        self._sessions: dict[str, Session] = {}

    @property
    def ttl_s(self) -> float:
        return self._config.ttl_ms / 1000

    @property
    def max_turns(self) -> int:
        return self._config.max_turns

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str, now: float) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None and now - session.last_used_at >= self.ttl_s:
            del self._sessions[session_id]
            return None
        return session

    def get_or_create(self, session_id: str, now: float) -> Session:
        session = self.get(session_id, now)
        if session is None:
            session = self._sessions[session_id] = Session(session_id, now, now)
        return session

    def ttl_remaining_ms(self, session: Session, now: float) -> int:
        return max(0, int((session.last_used_at + self.ttl_s - now) * 1000))

    def evict(self, session_id: str) -> bool:
        """Forget the session and its KV warmth (DELETE /v1/sessions/{id})."""
        return self._sessions.pop(session_id, None) is not None

    def prune(self, now: float) -> int:
        expired = [s.id for s in self._sessions.values() if now - s.last_used_at >= self.ttl_s]
        for session_id in expired:
            del self._sessions[session_id]
        return len(expired)
