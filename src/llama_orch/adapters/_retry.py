"""Retries of idempotent engine calls: capped, jittered exponential backoff (tenacity).

Nothing here retries a stream: once a generation request is sent, failures are final (D-HOST-02).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random_exponential,
)

from llama_orch.config import BackoffConfig, HttpConfig
from llama_orch.errors import DecodeTimeout, WorkerError, WorkerReset, WorkerUnavailable

T = TypeVar("T")

#: What a failed idempotent call may be retried on: the engine was unreachable or too slow.
RETRIABLE: tuple[type[WorkerError], ...] = (WorkerUnavailable, DecodeTimeout, WorkerReset)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` counts the first call too; waits grow from ``initial_s`` by ``factor`` up to
    ``max_s``, with full jitter when ``jitter`` is set."""

    attempts: int = 3
    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    jitter: bool = True

    @classmethod
    def from_config(cls, http: HttpConfig, backoff: BackoffConfig) -> RetryPolicy:
        return cls(
            attempts=http.retries + 1,
            initial_s=backoff.initial_ms / 1000,
            factor=backoff.factor,
            max_s=backoff.max_ms / 1000,
            jitter=backoff.jitter,
        )


RetryHook = Callable[[int, BaseException, float], None]


async def with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: tuple[type[BaseException], ...] = RETRIABLE,
    on_retry: RetryHook | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run an idempotent call, retrying ``retry_on`` failures; the last failure is re-raised."""
    wait = (
        wait_random_exponential(
            multiplier=policy.initial_s, exp_base=policy.factor, max=policy.max_s
        )
        if policy.jitter
        else wait_exponential(multiplier=policy.initial_s, exp_base=policy.factor, max=policy.max_s)
    )

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            delay = state.next_action.sleep if state.next_action else 0.0
            if exc is not None:
                on_retry(state.attempt_number, exc, delay)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, policy.attempts)),
        wait=wait,
        retry=retry_if_exception_type(retry_on),
        reraise=True,
        sleep=sleep,
        before_sleep=before_sleep,
    )
    return await retrying(fn)
