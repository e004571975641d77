"""Minimal auth: one shared bearer token, loopback policy, identity breadcrumbs (SPEC §13)."""

from llama_orch.auth.policy import LOCALHOST, AuthPolicy, is_loopback_address, is_worker_path
from llama_orch.auth.tokens import (
    bearer_of,
    fingerprint,
    mint_token,
    token_identity,
    token_matches,
)

__all__ = [
    "LOCALHOST",
    "AuthPolicy",
    "bearer_of",
    "fingerprint",
    "is_loopback_address",
    "is_worker_path",
    "mint_token",
    "token_identity",
    "token_matches",
]
