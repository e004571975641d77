"""Bearer tokens: timing-safe check, fingerprints, minting (AUTH-1001, AUTH-1007, AUTH-1008).

A token is never logged; only its fingerprint ``fp6`` (the first 6 hex digits of its SHA-256)
appears, as ``identity=token:<fp6>``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: Bytes of randomness in a minted token (256 bits, 43 URL-safe characters).
TOKEN_BYTES = 32


def fingerprint(token: str) -> str:
    """The first 6 hex digits of the token's SHA-256: enough to tell tokens apart in logs."""
    return hashlib.sha256(token.encode()).hexdigest()[:6]


def token_identity(token: str) -> str:
    return f"token:{fingerprint(token)}"


def token_matches(presented: str, expected: str) -> bool:
    """Compare in constant time for equal lengths (``hmac.compare_digest`` on bytes)."""
    return hmac.compare_digest(presented.encode(), expected.encode())


def bearer_of(header: str) -> str | None:
    """The credentials of ``Bearer <token>`` (scheme case-insensitive), else None."""
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials or " " in credentials:
        return None
    return credentials


def mint_token() -> str:
    """A fresh random token for ``AUTH_TOKEN`` (``llorch token new``)."""
    return secrets.token_urlsafe(TOKEN_BYTES)
