"""Sessions: short-lived groups of tasks with a TTL, turns, budgets, KV warmth and affinity.

A task with an unknown ``session_id`` creates the session; each admitted task is one turn; an
expired session is pruned lazily on access. The TTL is idle time: it does not run while a task
of the session is queued or running (a task that outlives it would otherwise end charging a
forgotten session, and the same id would start afresh with new turns and budgets), and it
starts again from that task's end. Budget limits are a pool's (``dispatch.sessions.budget_limits``):
a task is held to the limits of the pool it is admitted to, against everything the session has
spent on any pool, and the session reports what is left against the limits of the pool its
latest task was admitted to. KV warmth
is tracked per replica: a replica is warm for the session once it streamed the session's first
token there. Time is passed in, never read here.

Most sessions are never accessed again once idle (a client that sends a new ``session_id`` per
task, a front-door request without one): creating sessions also sweeps the expired ones, each
time the store has doubled since the last sweep, so it stays within about twice the sessions
used within one TTL at a cost that is constant per created session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llama_orch.core.budgets import BudgetLimits, BudgetRemaining, BudgetUsage, remaining
from llama_orch.core.model import Affinity

ReplicaKey = tuple[str, str]

#: The store's size below which creating a session sweeps nothing.
SWEEP_FLOOR = 1024


@dataclass(slots=True)
class Session:
    id: str
    created_at: float
    last_used_at: float
    limits: BudgetLimits = field(default_factory=BudgetLimits)
    usage: BudgetUsage = field(default_factory=BudgetUsage)
    turns: int = 0
    #: Tasks of the session admitted and not ended; the session is not idle while any is.
    active: int = 0
    kv_bytes: int = 0
    #: Replicas holding this session's KV cache, with when they last served it.
    warm: dict[ReplicaKey, float] = field(default_factory=dict)
    #: The replica that last served the session successfully, and when it finished.
    last_replica: ReplicaKey | None = None
    last_success_at: float = 0.0

    @property
    def kv_warmth(self) -> bool:
        return self.last_replica is not None and self.last_replica in self.warm

    @property
    def tokens_used(self) -> int:
        return self.usage.tokens_used

    @property
    def time_used_ms(self) -> int:
        return self.usage.time_used_ms

    @property
    def cost_used(self) -> float:
        return self.usage.cost_used

    def remaining(self) -> BudgetRemaining:
        return remaining(self.limits, self.usage)


@dataclass(frozen=True, slots=True)
class SessionRules:
    #: Idle time after which a session is forgotten.
    ttl_s: float
    #: How long after a success a session prefers the replica that served it.
    affinity_ttl_s: float
    max_turns: int


class SessionStore:
    def __init__(self, rules: SessionRules) -> None:
        self._rules = rules
        self._sessions: dict[str, Session] = {}
        self._sweep_at = SWEEP_FLOOR

    @property
    def ttl_s(self) -> float:
        return self._rules.ttl_s

    @property
    def affinity_ttl_s(self) -> float:
        return self._rules.affinity_ttl_s

    @property
    def max_turns(self) -> int:
        return self._rules.max_turns

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: Session, now: float) -> bool:
        return session.active == 0 and now - session.last_used_at >= self.ttl_s

    def get(self, session_id: str, now: float) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None and self._expired(session, now):
            del self._sessions[session_id]
            return None
        return session

    def get_or_create(self, session_id: str, now: float) -> Session:
        session = self.get(session_id, now)
        if session is None:
            if len(self._sessions) >= self._sweep_at:
                self.prune(now)
                self._sweep_at = max(SWEEP_FLOOR, 2 * len(self._sessions))
            session = self._sessions[session_id] = Session(session_id, now, now)
        return session

    def ttl_remaining_ms(self, session: Session, now: float) -> int:
        if session.active:
            return int(self.ttl_s * 1000)
        return max(0, int((session.last_used_at + self.ttl_s - now) * 1000))

    def hold(self, session: Session, now: float, limits: BudgetLimits) -> None:
        """A task of the session was admitted to a pool with budget ``limits``: one more turn,
        the TTL stops running, and what is left is reported against these limits from now."""
        session.limits = limits
        session.turns += 1
        session.active += 1
        session.last_used_at = now

    def release(self, session: Session, now: float, *, refund_turn: bool = False) -> None:
        """A task of the session ended: its TTL runs from now once no other task is left.

        ``refund_turn``: the server stopped the task (a drain, a reload, shutdown, a retired
        model), not the client; the turn it took is given back, as it was not the client's to
        spend."""
        session.active = max(0, session.active - 1)
        session.last_used_at = now
        if refund_turn:
            session.turns = max(0, session.turns - 1)

    def affinity(self, session_id: str, now: float) -> Affinity | None:
        """Where the session should go back to, while the soft TTL lasts."""
        return self.affinity_of(self.get(session_id, now))

    def affinity_of(self, session: Session | None) -> Affinity | None:
        """The same for a session object (a task's own: its id may name a newer session)."""
        if session is None or session.last_replica is None:
            return None
        pool_id, replica_id = session.last_replica
        return Affinity(pool_id, replica_id, session.last_success_at + self.affinity_ttl_s)

    def mark_warm(self, session: Session, key: ReplicaKey, now: float) -> None:
        session.warm[key] = now

    def served(self, session: Session, key: ReplicaKey, now: float) -> None:
        """A task of the session finished well on ``key``: affinity points there now."""
        session.last_replica = key
        session.last_success_at = now
        session.last_used_at = now

    def forget_replica(self, key: ReplicaKey) -> None:
        """A replica restarted or left: no session is warm on it any more."""
        for session in self._sessions.values():
            session.warm.pop(key, None)

    def evict(self, session_id: str) -> bool:
        """Forget the session and its KV warmth (DELETE /v1/sessions/{id})."""
        return self._sessions.pop(session_id, None) is not None

    def prune(self, now: float) -> int:
        expired = [s.id for s in self._sessions.values() if self._expired(s, now)]
        for session_id in expired:
            del self._sessions[session_id]
        return len(expired)
