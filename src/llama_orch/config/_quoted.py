"""Quoted numbers and booleans in a config file: ``slots: "4"`` or ``jitter: "false"``.

Validation alone would read them as the number or boolean (lax coercion), so the file would
say one type and mean another. Nothing feeds the file text where a number or boolean goes on
purpose (environment overrides are parsed before they reach the model), so such a value is
refused with its key and line, the reverse of the "quote it" advice for text.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llama_orch.errors import ConfigIssue

Path = tuple[str | int, ...]
_MERGE = "tag:yaml.org,2002:merge"


def quoted_scalars(
    raw: Any, validated: Any, text: str, loader: type[yaml.SafeLoader]
) -> list[ConfigIssue]:
    """One issue per text value in ``raw`` that validation turned into a number or boolean."""
    found = [(path, given, _expected(value)) for path, given, value in _walk(raw, validated, ())]
    return _issues(found, text, loader)


#: Strict validation's error for text where a number or boolean goes, and what goes there.
_STRICT_TYPES = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false"}


def quoted_in_invalid(
    model: type[BaseModel],
    raw: Any,
    text: str,
    loader: type[yaml.SafeLoader],
    refused: ValidationError,
) -> list[ConfigIssue]:
    """The quoted numbers and booleans of a file that does not validate, so they are listed
    with its other problems rather than after those are fixed.

    Lax validation (``refused``) accepted them; strict validation names them. A place lax
    validation refused already has its own message and is left to it.
    """
    named = {tuple(err["loc"]) for err in refused.errors(include_url=False)}
    try:
        model.model_validate(raw, strict=True)
    except ValidationError as exc:
        found = [
            (tuple(err["loc"]), err["input"], _STRICT_TYPES[err["type"]])
            for err in exc.errors(include_url=False)
            if err["type"] in _STRICT_TYPES
            and isinstance(err["input"], str)
            and tuple(err["loc"]) not in named
        ]
        return _issues(found, text, loader)
    return []


def _issues(
    found: list[tuple[Path, str, str]], text: str, loader: type[yaml.SafeLoader]
) -> list[ConfigIssue]:
    if not found:
        return []
    root = yaml.compose(text, Loader=loader)
    return [
        ConfigIssue(
            ".".join(str(part) for part in path),
            f"{expected} goes here, but line {_line(root, path)} quotes it as the text "
            f"{given!r}: remove the quotes",
        )
        for path, given, expected in found
    ]


def _walk(raw: Any, validated: Any, path: Path) -> Iterator[tuple[Path, str, Any]]:
    if isinstance(raw, dict):
        for key, item in raw.items():
            if isinstance(validated, BaseModel) and isinstance(key, str):
                yield from _walk(item, getattr(validated, key, None), (*path, key))
            elif isinstance(validated, Mapping) and key in validated:
                yield from _walk(item, validated[key], (*path, key))
    elif isinstance(raw, list) and isinstance(validated, list | tuple):
        for index, (item, value) in enumerate(zip(raw, validated, strict=False)):
            yield from _walk(item, value, (*path, index))
    elif (
        isinstance(raw, str)
        and isinstance(validated, bool | int | float)
        and not isinstance(validated, Enum)
    ):
        yield path, raw, validated


def _expected(value: bool | int | float) -> str:
    if isinstance(value, bool):
        return "true or false"
    return "an integer" if isinstance(value, int) else "a number"


def _line(root: yaml.Node | None, path: Path) -> str:
    """The line of the value at ``path`` (1-based), or ``?`` where it cannot be found."""
    node = root
    for part in path:
        node = _child(node, part)
        if node is None:
            return "?"
    return str(node.start_mark.line + 1) if node is not None else "?"


def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    """The node under ``part``; a key merged in (``<<: *base``) is found where it is written."""
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
        return node.value[part] if part < len(node.value) else None
    if not isinstance(node, yaml.MappingNode):
        return None
    pairs: list[tuple[yaml.Node, yaml.Node]] = node.value
    for key, value in pairs:
        if key.tag != _MERGE and key.value == str(part):
            return value
    for key, value in pairs:
        if key.tag == _MERGE:
            sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for source in sources:
                found = _child(source, part)
                if found is not None:
                    return found
    return None
