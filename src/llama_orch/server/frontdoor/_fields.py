"""Typed reads of request fields, each refusal naming the field (both front doors use these)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from llama_orch.contracts.api import MAX_INPUTS, MAX_STOP_CHARS
from llama_orch.contracts.engine import ChatMessage
from llama_orch.server.frontdoor._http import BadField

MISSING: Any = object()


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    """A client's value as an error message quotes it: a string in full, else its JSON type."""
    return repr(value) if isinstance(value, str) or value is None else _kind(value)


def string(body: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadField(f"{name} is required", param=name)
        return None
    if not isinstance(value, str):
        raise BadField(f"{name} must be a string, got {_kind(value)}", param=name)
    return value


def boolean(body: Mapping[str, Any], name: str, default: bool, *, prefix: str = "") -> bool:
    """``prefix``, here and below: where ``body`` sits in the request (``options.``), as a
    refusal names the field."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        field = prefix + name
        raise BadField(f"{field} must be a boolean, got {_kind(value)}", param=field)
    return value


def integer(
    body: Mapping[str, Any],
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    prefix: str = "",
) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    name = prefix + name
    if isinstance(value, float) and value.is_integer() and not -(2**63) <= value < 2**64:
        # The JSON parser reads an integer past 64 bits as a float: too large, not a fraction.
        bounds = _range(low, high) if low is not None or high is not None else "within 64 bits"
        raise BadField(f"{name} must be {bounds}, got an integer past 64 bits", param=name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadField(f"{name} must be an integer, got {_kind(value)}", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise BadField(f"{name} must be {_range(low, high)}, got {value}", param=name)
    return value


def _range(low: int | None, high: int | None) -> str:
    if high is None:
        return f"at least {low}"
    if low is None:
        return f"at most {high}"
    return f"within [{low}, {high}]"


def number(
    body: Mapping[str, Any],
    name: str,
    *,
    low: float,
    high: float | None,
    low_open: bool = False,
    prefix: str = "",
) -> float | None:
    """A number within [low, high] (``low_open``: above ``low``); ``high`` None: unbounded."""
    value = body.get(name)
    if value is None:
        return None
    name = prefix + name
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadField(f"{name} must be a number, got {_kind(value)}", param=name)
    if (high is not None and value > high) or value < low or (low_open and value == low):
        if high is None:
            bounds = f"{'above' if low_open else 'at least'} {low}"
        else:
            bounds = f"within {'(' if low_open else '['}{low}, {high}]"
        raise BadField(f"{name} must be {bounds}, got {value}", param=name)
    return float(value)


def stops(body: Mapping[str, Any], name: str, *, most: int, prefix: str = "") -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        return ()
    name = prefix + name
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise BadField(f"{name} must be a string or a list of strings", param=name)
    if len(items) > most:
        raise BadField(f"{name} takes at most {most} sequences, got {len(items)}", param=name)
    for stop in items:
        if len(stop) > MAX_STOP_CHARS:
            raise BadField(
                f"{name} sequences are at most {MAX_STOP_CHARS} characters, got one of {len(stop)}",
                param=name,
            )
    return tuple(s for s in items if s)


def refuse_unless_default(
    body: Mapping[str, Any], defaults: Mapping[str, tuple[Any, ...]], *, prefix: str = ""
) -> None:
    """Fields this server cannot honour are accepted only at a value that changes nothing;
    ``prefix`` is where ``body`` sits in the request (``options.``)."""
    for name, neutral in defaults.items():
        if name in body and not _among(body[name], neutral):
            # In JSON, as the client wrote it: null and false, not Python's None and False.
            accepted = " or ".join(json.dumps(v) for v in neutral)
            raise BadField(
                f"{prefix}{name} is not supported by this server (only {accepted} is "
                "accepted); remove it from the request",
                param=prefix + name,
            )


def _among(value: Any, choices: tuple[Any, ...]) -> bool:
    """``value in choices`` as JSON sees it: true is not 1, nor false 0 (Python's bool is an
    int), while 0 and 0.0 are the same number."""
    return any(
        isinstance(value, bool) == isinstance(choice, bool) and value == choice
        for choice in choices
    )


def refuse_unknown(body: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadField(
            f"unsupported field {unknown[0]!r}: this server does not implement it, and "
            "ignoring it could change the output; remove it from the request",
            param=unknown[0],
        )


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def messages(body: Mapping[str, Any], name: str = "messages") -> tuple[ChatMessage, ...]:
    """Text chat turns; content may be a string or a list of text parts."""
    value = body.get(name)
    if not isinstance(value, list) or not value:
        raise BadField(f"{name} must be a non-empty list of messages", param=name)
    turns = []
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise BadField(f"{where} must be an object with role and content", param=where)
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadField(
                f"{where}.role must be one of {', '.join(ROLES)}, got {_shown(role)} "
                "(tool messages are not supported)",
                param=f"{where}.role",
            )
        for unsupported in ("tool_calls", "images", "function_call", "audio"):
            if item.get(unsupported):
                raise BadField(
                    f"{where}.{unsupported} is not supported by this server",
                    param=f"{where}.{unsupported}",
                )
        turns.append(ChatMessage(ROLES[role], _content(item.get("content"), where)))
    return tuple(turns)


def _content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else _kind(part)
                raise BadField(
                    f"{where}.content part of type {kind!r} is not supported; only text parts",
                    param=f"{where}.content",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise BadField(f"{where}.content text part needs a string text", param=where)
            texts.append(text)
        return "".join(texts)
    raise BadField(
        f"{where}.content must be a string or a list of text parts", param=f"{where}.content"
    )


def text_list(value: Any, name: str, *, allow_string: bool) -> list[str]:
    """A peer API's input: a string (when allowed) or a non-empty list of non-empty strings,
    at most ``MAX_INPUTS`` of them."""
    if allow_string and isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        kind = "a string or a list of strings" if allow_string else "a list of strings"
        raise BadField(f"{name} must be {kind}", param=name)
    if not value:
        raise BadField(f"{name} is empty; send at least one text", param=name)
    if len(value) > MAX_INPUTS:
        raise BadField(
            f"{name} holds {len(value)} texts; at most {MAX_INPUTS} per request (split them)",
            param=name,
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadField(
                f"{name}[{i}] must be a string (token-id inputs are not supported)", param=name
            )
        if not item:
            raise BadField(f"{name}[{i}] is an empty string; every text must hold text", param=name)
    return value


# One Go duration component (time.ParseDuration): a number with at least one digit, a unit.
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def keep_alive_is_zero(body: Mapping[str, Any], name: str = "keep_alive") -> bool:
    """Ollama's ``keep_alive``: a number of seconds or a Go duration string ("5m", "1h30m",
    "0"), a negative one meaning forever. True when it is zero (unload now); anything Ollama
    would refuse to parse is refused here too."""
    value = body.get(name)
    if value is None:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, str):
        zero = _go_duration_is_zero(value)
        if zero is not None:
            return zero
    raise BadField(
        f'{name} must be a number of seconds or a duration such as "5m" or "1h30m", '
        f"got {_shown(value)}",
        param=name,
    )


def _go_duration_is_zero(text: str) -> bool | None:
    """Whether a Go duration string is zero; None when Go would not parse it."""
    rest = text[1:] if text[:1] in ("-", "+") else text
    if rest == "0":
        return True
    if not rest:
        return None
    zero = True
    position = 0
    while position < len(rest):
        part = _DURATION_PART.match(rest, position)
        if part is None or not (part.group(1) or part.group(2)):
            return None
        zero = zero and not any(c in "123456789" for c in part.group(1) + (part.group(2) or ""))
        position = part.end()
    return zero
