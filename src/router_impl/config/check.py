"""Every problem of a runtime-config file, one ``path: message`` line each (``router config validate``,
and ``router serve --config`` before it starts). Pure but for reading the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from router_impl.config.model import RuntimeConfig

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def file_problems(path: Path) -> list[str]:
    """[] when ``path`` holds a valid runtime config."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        return [f"(file): cannot read {path}: {exc.strerror or exc}"]
    return document_problems(text)


def document_problems(text: bytes | str) -> list[str]:
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader (libyaml's, when present)
    except yaml.YAMLError as exc:
        return [_yaml_problem(exc)]
    if raw is None:
        return []  # an empty file is the empty config
    if not isinstance(raw, dict):
        return [f"(document): a mapping of backends, models, api_keys, ... is expected, not {_kind(raw)}"]
    try:
        RuntimeConfig.model_validate(raw)
    except ValidationError as exc:
        return flatten(exc)
    return []


def flatten(exc: ValidationError) -> list[str]:
    """pydantic's errors as ``backends[0].base_url: message`` lines, without the input values (they may
    hold secrets). A whole-config rule (unknown backend, duplicate id) reports each of its problems."""
    lines: list[str] = []
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    for error in errors:
        if error["type"] == "too_short" and _has_item_errors(error["loc"], errors):
            continue  # pydantic also calls a list "too short" when one of its items is invalid
        path = _path(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        for part in message.splitlines():
            lines.append(f"{path}: {part}" if path else part)
    return lines


def _has_item_errors(loc: tuple[int | str, ...], errors: list[Any]) -> bool:
    return any(len(e["loc"]) > len(loc) and e["loc"][: len(loc)] == loc for e in errors)


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(document)"
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{where}: not valid YAML: {problem}"


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else f"a {type(value).__name__}"
