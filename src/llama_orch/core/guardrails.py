"""Pure admission guardrails that run before enqueue (ORCH-3014, OC-CORE-1020/1021)."""

from __future__ import annotations

from dataclasses import dataclass

#: Without an engine tokenizer, estimate conservatively: one token per 3 bytes (SPEC §17.8).
BYTES_PER_TOKEN_ESTIMATE = 3


def estimate_prompt_tokens(prompt_bytes: int) -> int:
    return -(-prompt_bytes // BYTES_PER_TOKEN_ESTIMATE)


@dataclass(frozen=True, slots=True)
class GuardViolation:
    field: str
    message: str


def check_context(
    *, ctx: int, model_ctx_max: int, prompt_tokens: int, max_tokens: int
) -> GuardViolation | None:
    """The task's ctx must fit the model, and prompt + generation must fit the ctx."""
    if ctx > model_ctx_max:
        return GuardViolation(
            "ctx", f"ctx {ctx} exceeds the model limit {model_ctx_max}; ask for at most that"
        )
    if prompt_tokens + max_tokens > ctx:
        return GuardViolation(
            "max_tokens",
            f"prompt (~{prompt_tokens} tokens) + max_tokens {max_tokens} exceeds ctx {ctx}; "
            "shorten the prompt, lower max_tokens or raise ctx",
        )
    return None


def check_overrides(
    *,
    mode: str,
    pin_pool_id: str | None,
    prefer_pools: tuple[str, ...],
    avoid_pools: tuple[str, ...],
    known_pools: frozenset[str],
) -> GuardViolation | None:
    """Placement overrides must name configured pools and must not contradict themselves."""
    named = [pin_pool_id] if pin_pool_id else []
    unknown = sorted({p for p in (*named, *prefer_pools, *avoid_pools) if p not in known_pools})
    if unknown:
        return GuardViolation(
            "placement",
            f"unknown pool id(s) {unknown}; configured pools: {sorted(known_pools)}",
        )
    if mode == "pin" and pin_pool_id in avoid_pools:
        return GuardViolation(
            "placement", f"pin_pool_id {pin_pool_id} is also in avoid_pools; drop one of them"
        )
    return None
