"""Tokens: fingerprints, the bearer header, the timing-safe compare and minting."""

from __future__ import annotations

import hashlib

import pytest

from llama_orch.auth.tokens import (
    bearer_of,
    fingerprint,
    mint_token,
    token_identity,
    token_matches,
)


class TestFingerprint:
    def test_first_six_hex_of_sha256(self) -> None:
        """fp6 is the first 6 hex digits of the token's SHA-256 (AUTH-1008)."""
        assert hashlib.sha256(b"s3cret").hexdigest()[:6] == fingerprint("s3cret")

    def test_identity_names_only_the_fingerprint(self) -> None:
        """The identity breadcrumb carries the fingerprint, never the token."""
        identity = token_identity("s3cret-token")
        assert f"token:{fingerprint('s3cret-token')}" == identity
        assert "s3cret" not in identity


class TestBearer:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("Bearer abc", "abc"),
            ("bearer abc", "abc"),
            ("  Bearer   abc  ", "abc"),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer a b", None),
            ("abc", None),
            ("", None),
        ],
    )
    def test_parses_only_bearer(self, header: str, expected: str | None) -> None:
        """Only `Bearer <token>` yields credentials; the scheme is case-insensitive."""
        assert expected == bearer_of(header)


class TestCompare:
    def test_equal_and_unequal(self) -> None:
        """Equal tokens match; a prefix, a longer string or another token does not."""
        assert (True, False, False, False) == (
            token_matches("abc", "abc"),
            token_matches("ab", "abc"),
            token_matches("abcd", "abc"),
            token_matches("xyz", "abc"),
        )

    def test_non_ascii_is_compared_as_bytes(self) -> None:
        """Non-ASCII tokens are compared as UTF-8 bytes instead of raising."""
        assert (True, False) == (token_matches("é", "é"), token_matches("é", "e"))


class TestMint:
    def test_tokens_are_long_random_and_urlsafe(self) -> None:
        """Minted tokens carry 256 bits in URL-safe characters and never repeat."""
        tokens = {mint_token() for _ in range(50)}
        assert 50 == len(tokens)
        for token in tokens:
            assert len(token) >= 43
            assert set(token) <= set(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            )
