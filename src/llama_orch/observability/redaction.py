"""Redaction of secrets: bearer tokens, API keys, Authorization headers, URL credentials.

Applied at the log sink and to error bodies (ORCH-3613, OC-CTRL-2041).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Credentials shorter than 8 characters, or written as a ``<placeholder>``, are prose ("the
# bearer token does not match", "send Authorization: Bearer <token>"), not secrets; configured
# secrets of any length are redacted by value.
_CREDENTIAL = r"[^\s\"',;&<>]{8,}"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"(?i)\b(authorization|x-api-key|api[_-]?key)([\"']?\s*[:=]\s*[\"']?)"
            r"(?:(?:bearer|basic|token)\s+)?" + _CREDENTIAL
        ),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    (
        # Pre-signed download links (S3's X-Amz-*, Google Cloud Storage's X-Goog-*) carry their
        # signature and session token in the query, as Azure's SAS carries ``sig``.
        re.compile(
            r"(?i)([?&](?:api[_-]?key|token|access_token|key|sig|signature"
            r"|x-(?:amz|goog)-(?:signature|security-token))=)[^&\s\"']+"
        ),
        r"\1" + REDACTED,
    ),
    # The scheme's length is bounded: unbounded, every word boundary before a "://" (in
    # "a.a.a.a...://") started a scan to it, quadratic in the text's length.
    (
        re.compile(r"(?i)([a-z][a-z0-9+.-]{0,31}://)[^/\s:@\"']+:[^/\s@\"']+@"),
        r"\1" + REDACTED + "@",
    ),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), REDACTED),
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), REDACTED),
)


def _may_hold_secret(value: str) -> bool:
    """False only when no pattern can match: each needs one of these substrings (compared
    case-insensitively, as the patterns are). Most log text has none, and these checks cost a
    tenth of the substitution passes. Non-ASCII text always gets the passes, since the regex
    engine folds a few non-ASCII letters (long s, Kelvin sign, dotless i) onto ASCII ones."""
    if not value.isascii():
        return True
    low = value.lower()
    return (
        "=" in value
        or "://" in value
        or "sk-" in value
        or "hf_" in value
        or "api_key" in low
        or "apikey" in low
        or "api-key" in low
        or "authorization" in low
        or "bearer" in low
    )


_SECRET_KEYS = frozenset(
    {"authorization", "x-api-key", "api_key", "apikey", "token", "auth_token", "password", "secret"}
)


@functools.lru_cache(maxsize=1024)
def is_secret_key(key: str) -> bool:
    """Whether a field or header named ``key`` holds a secret (its value is never shown)."""
    return key.lower() in _SECRET_KEYS


#: The last word of a setting's or variable's name that says its value is a secret
#: (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ``db_password``); ``api_key_env`` or ``key_file``
#: name where a secret is, not the secret, and ``max_tokens`` is a count.
_SECRET_NAME = re.compile(
    r"(?i)(?:^|[_.-])(?:token|secret|password|passwd|passphrase|key|apikey|credentials?|pat)$"
)
#: Shorter values under such names are not redacted by value: replacing every "true" or
#: "1234" in every response would garble them, and the patterns' floor is the same.
_MIN_SECRET_VALUE = 8


def secret_values(tree: Any) -> tuple[str, ...]:
    """Every string in ``tree`` (mappings and lists, e.g. a dumped config) held under a name
    that says it is a secret, including the entries of environment maps."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                name = str(key)
                secret = is_secret_key(name) or _SECRET_NAME.search(name) is not None
                if isinstance(value, str) and secret and len(value) >= _MIN_SECRET_VALUE:
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item)

    walk(tree)
    return tuple(dict.fromkeys(found))


#: The size of the pieces ``Redactor.text_in_pieces`` cuts a long text into: a pass of every
#: pattern over one takes a few milliseconds.
PIECE = 16 * 1024


class Redactor:
    """Replaces known secret values and secret-shaped substrings with ``[REDACTED]``."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self._secrets = tuple(s for s in secrets if s)

    def with_secret(self, secret: str | None) -> Redactor:
        if not secret:
            return self
        return Redactor((*self._secrets, secret))

    def is_clean(self, value: str) -> bool:
        """True when ``text`` would return ``value`` unchanged, checked without the passes:
        no configured secret occurs in it and no pattern's trigger does either."""
        return not any(secret in value for secret in self._secrets) and not _may_hold_secret(value)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        if not _may_hold_secret(value):
            return value
        for pattern, replacement in _PATTERNS:
            value = pattern.sub(replacement, value)
        return value

    def text_in_pieces(self, value: str, piece: int = PIECE) -> str:
        """``text(value)``, the patterns applied one piece of about ``piece`` characters at a
        time: each pass over a piece is one short call, so a thread doing this hands the
        interpreter back between pieces, where one pass over megabytes would hold it for a
        tenth of a second. Configured secrets, which may hold any character, are replaced in
        the whole text first, as ``text`` does.

        A piece ends after a ``,`` that a ``"`` follows (between the fields or items of a JSON
        body). No match of any pattern holds that pair, and none starts with ``"`` or looks
        past its last character, so each match lies inside one piece and is found there as
        in the whole text; no replacement makes or breaks such a pair either. A text without
        one is a single piece."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        done: list[str] = []
        start = 0
        while start < len(value):
            cut = value.find(',"', start + piece)
            end = len(value) if cut < 0 else cut + 1
            part = value[start:end]
            if _may_hold_secret(part):
                for pattern, replacement in _PATTERNS:
                    part = pattern.sub(replacement, part)
            done.append(part)
            start = end
        return "".join(done)

    def value(self, value: Any, key: str | None = None) -> Any:
        if key is not None and value and is_secret_key(key):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value
